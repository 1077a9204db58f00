"""The agent's CA client against real CAs on loopback: what a failed TLS handshake is reported as,
a changed --ca-root file taken up on the next call, and a refusal that --once does not retry."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from ca.agent.bundle import HeldBundle
from ca.agent.ca_client import CaClient, CaEndpoint, CaRefusedError
from ca.agent.ca_tls import CaNotTrustedError
from ca.agent.once import NoCertificateError, fetch_once
from ca.agent.runner import build_agent
from ca.errors import ConfigError, ErrorKind, MeshcaError, UnavailableError
from ca.server.devtoken import DevTokenIssuer
from tests.support.agent import LiveClock, agent_args, parse_agent_config
from tests.support.ca_server import RunningCa, start_ca
from tests.support.clock import FakeClock
from tests.support.pki import ec_key, make_csr

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningCa, RunningCa]]:
    """Two CAs with roots of their own: the one called, and another."""
    base = tmp_path_factory.mktemp("two-cas")
    called = start_ca(base / "called", clock=LiveClock())
    other = start_ca(base / "other", clock=LiveClock())
    try:
        yield called, other
    finally:
        called.stop()
        other.stop()


def client(port: int, root_file: Path, token_file: Path, server_name: str | None = "localhost") -> CaClient:
    endpoint = CaEndpoint(address=f"127.0.0.1:{port}", root_file=root_file, server_name=server_name)
    return CaClient(endpoint, token_file)


def request(ca_client: CaClient) -> list[str]:
    try:
        return ca_client.create_certificate(make_csr(ec_key()), 3600)
    finally:
        ca_client.close()


def failure(ca_client: CaClient) -> MeshcaError:
    with pytest.raises(MeshcaError) as caught:
        request(ca_client)
    return caught.value


def token_file(ca: RunningCa, directory: Path) -> Path:
    path = directory / "token"
    path.write_text(ca.token())
    return path


def copy_root(ca: RunningCa, path: Path) -> Path:
    path.write_bytes(ca.bundle)
    return path


def test_a_ca_root_that_does_not_match_the_ca_is_named(
    cas: tuple[RunningCa, RunningCa], tmp_path: Path
) -> None:
    called, other = cas
    root = copy_root(other, tmp_path / "root-cert.pem")
    error = failure(client(called.port, root, token_file(called, tmp_path)))
    assert isinstance(error, CaNotTrustedError) and error.kind is ErrorKind.CONFIG, error
    assert error.reason == "ca_untrusted"
    assert f"does not chain to the root(s) in --ca-root {root}" in str(error)
    assert "set --ca-root to this CA's root-cert.pem" in str(error)
    assert "SSL_ERROR" not in str(error) and "TSI_" not in str(error)


def test_a_server_name_the_ca_does_not_carry_is_not_called_an_untrusted_root(
    cas: tuple[RunningCa, RunningCa], tmp_path: Path
) -> None:
    called, _ = cas
    root = copy_root(called, tmp_path / "root-cert.pem")
    error = failure(client(called.port, root, token_file(called, tmp_path), server_name="ca.example"))
    assert type(error) is ConfigError and error.reason == "ca_name_mismatch", error
    assert "not for 'ca.example'" in str(error) and "--ca-server-name" in str(error)
    assert "chain" not in str(error)


def test_a_ca_that_is_down_is_unreachable_not_untrusted(
    cas: tuple[RunningCa, RunningCa], tmp_path: Path
) -> None:
    called, _ = cas
    root = copy_root(called, tmp_path / "root-cert.pem")
    with socket.socket() as held:  # bound, never listening: every connection is refused
        held.bind(("127.0.0.1", 0))
        error = failure(client(held.getsockname()[1], root, token_file(called, tmp_path)))
    assert type(error) is UnavailableError and error.reason == "unavailable", error
    assert "cannot reach the CA at 127.0.0.1:" in str(error)


@contextlib.contextmanager
def hanging_up_listener() -> Iterator[int]:
    """A port that accepts each connection and closes it before any TLS is spoken."""
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.05)

        def hang_up() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    server.accept()[0].close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            thread.join(5)


def test_a_connection_closed_during_the_handshake_is_unreachable_not_untrusted(
    cas: tuple[RunningCa, RunningCa], tmp_path: Path
) -> None:
    called, _ = cas
    root = copy_root(called, tmp_path / "root-cert.pem")
    with hanging_up_listener() as port:
        error = failure(client(port, root, token_file(called, tmp_path)))
    assert type(error) is UnavailableError, error


def test_a_changed_ca_root_file_is_trusted_from_the_next_call(
    cas: tuple[RunningCa, RunningCa], tmp_path: Path
) -> None:
    """The root file is re-read on every call; a new content means a new channel, so a CA whose
    root was rotated (and the file with it) is reached again without restarting the agent."""
    called, other = cas
    root = copy_root(other, tmp_path / "root-cert.pem")
    ca_client = client(called.port, root, token_file(called, tmp_path))
    try:
        with pytest.raises(CaNotTrustedError):
            ca_client.create_certificate(make_csr(ec_key()), 3600)
        copy_root(called, root)
        chain = ca_client.create_certificate(make_csr(ec_key()), 3600)
        assert chain[-1].encode() == called.bundle
        copy_root(other, root)  # and the other way: the working connection is not kept
        with pytest.raises(CaNotTrustedError):
            ca_client.create_certificate(make_csr(ec_key()), 3600)
    finally:
        ca_client.close()


def test_the_ca_is_reached_through_the_held_bundle_when_the_ca_root_file_is_stale(
    cas: tuple[RunningCa, RunningCa], tmp_path: Path
) -> None:
    """The CA's serving certificate moved to a root the CA pushed: an agent whose --ca-root file
    names only the other root still reaches it, and a changed bundle means a new channel."""
    called, other = cas
    root = copy_root(other, tmp_path / "root-cert.pem")
    bundle = HeldBundle()
    endpoint = CaEndpoint(address=f"127.0.0.1:{called.port}", root_file=root, server_name="localhost")
    ca_client = CaClient(endpoint, token_file(called, tmp_path), bundle)
    try:
        with pytest.raises(CaNotTrustedError):
            ca_client.create_certificate(make_csr(ec_key()), 3600)
        bundle.take(1, x509.load_pem_x509_certificates(called.bundle))
        chain = ca_client.create_certificate(make_csr(ec_key()), 3600)
        assert chain[-1].encode() == called.bundle
    finally:
        ca_client.close()


def test_once_does_not_retry_a_token_the_ca_refuses(cas: tuple[RunningCa, RunningCa], tmp_path: Path) -> None:
    called, _ = cas
    long_ago = FakeClock(datetime.now(UTC) - timedelta(hours=3))
    expired = tmp_path / "token"
    issuer = DevTokenIssuer.load_or_create(called.state_dir, long_ago)
    expired.write_text(issuer.mint(namespace="shop", service_account="init", ttl=timedelta(hours=1)))
    args = agent_args(
        ca_port=called.port,
        ca_root=called.state_dir / "root-cert.pem",
        token_file=expired,
        output_dir=tmp_path / "certs",
        health=False,
        extra=["--once", "on"],
    )
    process = build_agent(parse_agent_config(args))

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"--once waited {seconds}s to retry a refused token")

    try:
        with pytest.raises(NoCertificateError) as failed:
            fetch_once(process.agent, timeout=timedelta(seconds=60), clock=process.clock, sleep=no_sleep)
    finally:
        process.client.close()
    assert isinstance(process.agent.last_error, CaRefusedError)
    assert "UNAUTHENTICATED" in str(failed.value) and failed.value.reason == "unauthenticated"
    assert not (tmp_path / "certs").exists()
