"""A real `meshca serve` process on loopback for the control stream's tests, and the calls a test
makes to it: certificates by token, renewal and control streams with a client certificate, and
the rotation store of its ledger (as `meshca rotate --state-dir` writes into it)."""

from __future__ import annotations

import contextlib
import queue
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from ca._proto import meshca_control_pb2 as pb
from ca._proto import meshca_control_pb2_grpc as pb_grpc
from ca.common.clock import SystemClock
from ca.issuance.keys import PrivateKey, private_key_pem
from ca.ledger import queries
from ca.ledger.reader import open_reader
from ca.ledger.rotation import Order, Selector
from ca.ledger.rotation_store import SqlRotationStore
from ca.server.devtoken import DevTokenIssuer
from tests.support.dataplanes import meshca_process, stop_process
from tests.support.pki import ec_key, make_csr
from tests.support.ports import read_ports_file

AGENT_METADATA = (("meshca-agent", "meshca/test"),)


@dataclass
class Issued:
    """A certificate the CA issued, with its key, as a client presents it."""

    chain: list[str]
    key: PrivateKey

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain[0].encode())

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")

    def client_chain(self) -> bytes:
        return "".join(self.chain[:-1]).encode()


@dataclass
class ControlCall:
    """A raw control stream: what the test sends goes through `outgoing`; `next()` reads."""

    call: Any
    outgoing: queue.SimpleQueue[pb.AgentMessage | None]
    responses: Iterator[pb.ControlMessage]

    def next(self) -> pb.ControlMessage:
        return next(self.responses)

    def send(self, message: pb.AgentMessage) -> None:
        self.outgoing.put(message)

    def close(self) -> None:
        self.outgoing.put(None)
        self.call.cancel()


@dataclass
class CaProcess:
    workdir: Path
    process: Any
    ports: dict[str, int]
    channels: list[grpc.Channel] = field(default_factory=list)
    calls: list[ControlCall] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def root_file(self) -> Path:
        return self.state_dir / "root-cert.pem"

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.state_dir}/ledger.db"

    def log(self) -> str:
        return (self.workdir / "ca.log").read_text(errors="replace")

    def token(self, namespace: str = "shop", service_account: str = "cart") -> str:
        issuer = DevTokenIssuer.load_or_create(self.state_dir, SystemClock())
        return issuer.mint(namespace=namespace, service_account=service_account)

    def channel(self, port_name: str, client: Issued | None = None) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.root_file.read_bytes(),
            private_key=private_key_pem(client.key) if client is not None else None,
            certificate_chain=client.client_chain() if client is not None else None,
        )
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.ports[port_name]}",
            credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        self.channels.append(channel)
        return channel

    def issue(
        self,
        namespace: str = "shop",
        service_account: str = "cart",
        *,
        metadata: Sequence[tuple[str, str]] = AGENT_METADATA,
    ) -> Issued:
        """A certificate by token, as a meshca agent asks for one (with its metadata) by default."""
        key = ec_key()
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(self.channel("grpc"))  # type: ignore[no-untyped-call]
        headers = [("authorization", f"Bearer {self.token(namespace, service_account)}"), *metadata]
        response = stub.CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key)), metadata=headers, timeout=10
        )
        return Issued(chain=list(response.cert_chain), key=key)

    def renew(self, current: Issued) -> Issued:
        """A new certificate on the renewal port, authenticated by `current`."""
        key = ec_key()
        stub = istio_ca_pb2_grpc.IstioCertificateServiceStub(self.channel("renew", current))  # type: ignore[no-untyped-call]
        response = stub.CreateCertificate(istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key)), timeout=10)
        return Issued(chain=list(response.cert_chain), key=key)

    def control(
        self, client: Issued | None, *, port_name: str = "renew", hello: pb.AgentMessage | None = None
    ) -> ControlCall:
        """A control stream opened with `client`'s certificate; the Hello is sent first."""
        outgoing: queue.SimpleQueue[pb.AgentMessage | None] = queue.SimpleQueue()
        outgoing.put(hello or pb.AgentMessage(hello=pb.Hello(agent_version="test", pod_name="cart-0")))

        def messages() -> Iterator[pb.AgentMessage]:
            while (message := outgoing.get()) is not None:
                yield message

        stub = pb_grpc.ControlStub(self.channel(port_name, client))  # type: ignore[no-untyped-call]
        call = stub.Connect(messages(), timeout=30)
        opened = ControlCall(call=call, outgoing=outgoing, responses=iter(call))
        self.calls.append(opened)
        return opened

    @contextlib.contextmanager
    def store(self) -> Iterator[SqlRotationStore]:
        store = SqlRotationStore.open(self.ledger_url)
        try:
            yield store
        finally:
            store.dispose()

    def order(
        self, order_id: str, selector: Selector, *, grace: timedelta = timedelta(minutes=5), **terms: Any
    ) -> Order:
        """An order written into the ledger's rotation tables, as `meshca rotate --state-dir` does."""
        now = SystemClock().now()
        order = Order(
            id=order_id,
            ordered_by="spiffe://cluster.local/ns/istio-system/sa/admin",
            time=now,
            selector=selector,
            reason="test order",
            grace=grace,
            **terms,
        )
        with self.store() as store:
            store.create_order(order, store.live_certificates(selector, now))
        return order

    def revoke(self, serial: str, reason: str = "keyCompromise") -> None:
        with self.store() as store:
            store.revoke([serial], reason=reason, at=SystemClock().now())

    def records(self, serial: str) -> list[dict[str, Any]]:
        """Every ledger entry naming this serial."""
        reader = open_reader(self.ledger_url)
        try:
            return queries.find_serial(reader, serial)
        finally:
            reader.dispose()

    def stop(self) -> None:
        for call in self.calls:
            with contextlib.suppress(Exception):
                call.close()
        for channel in self.channels:
            channel.close()
        stop_process(self.process)


@contextlib.contextmanager
def ca_process(*extra: str) -> Iterator[CaProcess]:
    """`meshca serve` with a state dir of its own, a token port and a renewal port."""
    workdir = Path(tempfile.mkdtemp(prefix="meshca-ctl", dir="/tmp"))
    (workdir / "state").mkdir()
    ports_file = workdir / "ports.json"
    log = workdir / "ca.log"
    args = [
        "serve",
        "--state-dir",
        str(workdir / "state"),
        "--listen",
        "127.0.0.1:0",
        "--renew-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--ports-file",
        str(ports_file),
        *extra,
    ]
    process = meshca_process(args, log)
    running: CaProcess | None = None
    try:
        ports = read_ports_file(ports_file, process, log=log)
        running = CaProcess(workdir=workdir, process=process, ports=ports)
        yield running
    finally:
        if running is not None:
            running.stop()
        else:
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)
