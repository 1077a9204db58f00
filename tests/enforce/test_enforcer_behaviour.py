"""One behaviour suite, two data planes: `meshca enforce` and a real Envoy from `meshca policy envoy-config`.

Both stand in front of the same application ports of one workload (shop, app=web)
and read the same directory of PeerAuthentication manifests; certificates come
from a real CA through real agents (the Envoy over SDS, the Python enforcer from
the agent's files). Every case runs against both, and both must give the same
outcome:

    client     | STRICT  | PERMISSIVE | DISABLE
    mesh       | mTLS    | mTLS       | passed through (TLS reaches the app untouched)
    foreign CA | refused | refused    | passed through
    look-alike | refused | refused    | passed through
    no cert    | refused | refused    | passed through
    plaintext  | refused | plaintext  | plaintext

"look-alike" holds a certificate from the mesh's own CA for the SPIFFE ID
spiffe://cluster.local.evil/...: the right chain, the wrong trust domain.

The modes come from port-level policy (one application port per mode and
protocol); one more port inherits a namespace-wide policy that the mode-change
test rewrites from PERMISSIVE to STRICT while everything keeps running.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.issuance.cert_dir import CERT_CHAIN, DATA_LINK, KEY
from tests.support.agent import LiveClock, RunningAgent, agent_args, short_dir, start_agent, wait_until
from tests.support.ca_server import RunningCa, start_ca
from tests.support.dataplanes import (
    APP_COMMON_NAME,
    AppServer,
    ClientCert,
    DataPlane,
    Exchange,
    PlaneSpec,
    client_contexts,
    exchange,
    issued_cert,
    self_signed_server,
    start_envoy_plane,
    start_python_plane,
    uri_sans,
)
from tests.support.pki import make_hierarchy

pytestmark = pytest.mark.slow

NAMESPACE = "shop"
WORKLOAD_ID = "spiffe://cluster.local/ns/shop/sa/web"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"
FORGED_XFCC = "By=spiffe://cluster.local/ns/evil/sa/x;URI=spiffe://cluster.local/ns/evil/sa/mallory"
SPIFFE_ID_TLV = "224"  # ca.policy.ports.SPIFFE_ID_TLV_TYPE, as the app's JSON keys it

MODES = ("STRICT", "PERMISSIVE", "DISABLE")
CLIENTS = ("mesh", "foreign", "lookalike", "nocert", "plaintext")
EXPECTED = {
    "STRICT": {"mesh": "mtls", "foreign": "refused", "lookalike": "refused", "nocert": "refused",
               "plaintext": "refused"},
    "PERMISSIVE": {"mesh": "mtls", "foreign": "refused", "lookalike": "refused", "nocert": "refused",
                   "plaintext": "plaintext"},
    "DISABLE": {"mesh": "passthrough", "foreign": "passthrough", "lookalike": "passthrough",
                "nocert": "passthrough", "plaintext": "plaintext"},
}  # fmt: skip
# Application ports by role: (protocol, mode set at port level, or None to inherit the namespace's).
ROLES: dict[str, tuple[str, str | None]] = {
    **{f"http-{mode.lower()}": ("http", mode) for mode in MODES},
    **{f"tcp-{mode.lower()}": ("tcp", mode) for mode in MODES},
    "tcp-proxy": ("tcp", "PERMISSIVE"),  # with a PROXY protocol v2 header to the app
    "http-change": ("http", None),
}


# --------------------------------------------------------------------------- policies


def namespace_policy(mode: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: default, namespace: {NAMESPACE}}}\n"
        f"spec:\n  mtls: {{mode: {mode}}}\n"
    )


def workload_policy(app_ports: dict[str, int]) -> str:
    lines = [
        "apiVersion: security.istio.io/v1beta1",
        "kind: PeerAuthentication",
        f"metadata: {{name: web, namespace: {NAMESPACE}}}",
        "spec:",
        "  selector: {matchLabels: {app: web}}",
        "  portLevelMtls:",
    ]
    lines += [f"    {app_ports[role]}: {{mode: {mode}}}" for role, (_, mode) in ROLES.items() if mode]
    return "\n".join(lines) + "\n"


MESH_POLICY = (
    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
    "metadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n"
)


def write_policy(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


# --------------------------------------------------------------------------- certificates


def agent_files(agent: RunningAgent) -> ClientCert:
    """The agent's chain and key of one issuance (read through `..data` once)."""

    def read() -> ClientCert:
        version = (agent.cfg.output_dir / DATA_LINK).resolve(strict=True)
        return ClientCert((version / CERT_CHAIN).read_bytes(), (version / KEY).read_bytes())

    return wait_until(read, 10, f"certificate files in {agent.cfg.output_dir}")


def foreign_cert(base: Path) -> ClientCert:
    """A certificate for the client's own SPIFFE ID from another (real) meshca CA."""
    other = start_ca(base / "foreign-state", clock=LiveClock())
    try:
        return issued_cert(other, NAMESPACE, "client")
    finally:
        other.stop()


def leaf_of(chain_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(chain_pem)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    base: Path
    ca: RunningCa
    workload_agent: RunningAgent
    spec: PlaneSpec
    apps: dict[str, AppServer]  # role -> the application port's server
    app_ports: dict[str, int]  # role -> application port
    clients: dict[str, ssl.SSLContext | None]
    client_leaf: x509.Certificate
    namespace_file: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def client_hash(self) -> str:
        """Envoy's XFCC `Hash`: SHA-256 of the client certificate (DER), hex."""
        return hashlib.sha256(self.client_leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def _start_agent(ca: RunningCa, base: Path, service_account: str, *, sds: bool) -> RunningAgent:
    token = base / f"{service_account}.token"
    token.write_text(ca.token(NAMESPACE, service_account) + "\n")
    agent = start_agent(
        agent_args(
            ca_port=ca.port,
            ca_root=ca.state_dir / "root-cert.pem",
            token_file=token,
            output_dir=base / f"{service_account}-certs",
            sds_socket=base / f"{service_account}.sds" if sds else None,
            health=False,
        )
    )
    agent.wait_for_svid()
    return agent


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with contextlib.ExitStack() as stack, short_dir("mca-enf-") as base:
        hierarchy = make_hierarchy()
        ca = start_ca(
            base / "state", "--cacerts", str(hierarchy.write_cacerts(base / "cacerts")), clock=LiveClock()
        )
        stack.callback(ca.stop)
        workload_agent = _start_agent(ca, base, "web", sds=True)
        stack.callback(workload_agent.stop)
        client_agent = _start_agent(ca, base, "client", sds=False)
        stack.callback(client_agent.stop)
        mesh = agent_files(client_agent)

        app_tls = self_signed_server(base)
        apps = {role: AppServer(app_tls) for role in ROLES}
        for app in apps.values():
            stack.callback(app.stop)
        app_ports = {role: app.port for role, app in apps.items()}

        policies = base / "policies"
        policies.mkdir()
        write_policy(policies / "mesh.yaml", MESH_POLICY)
        write_policy(policies / "namespace.yaml", namespace_policy("PERMISSIVE"))
        write_policy(policies / "web.yaml", workload_policy(app_ports))

        clients = client_contexts(mesh=mesh, foreign=foreign_cert(base), hierarchy=hierarchy, workdir=base)
        yield World(
            base=base,
            ca=ca,
            workload_agent=workload_agent,
            spec=PlaneSpec(
                namespace=NAMESPACE,
                labels="app=web,version=v1",
                app_ports={app_ports[role]: proto for role, (proto, _) in ROLES.items()},
                proxy_protocol=(app_ports["tcp-proxy"],),
                policies=policies,
            ),
            apps=apps,
            app_ports=app_ports,
            clients=clients,
            client_leaf=leaf_of(mesh.chain_pem),
            namespace_file=policies / "namespace.yaml",
        )


@pytest.fixture(scope="module", params=["python", "envoy"])
def plane(request: pytest.FixtureRequest, world: World) -> Iterator[DataPlane]:
    workdir = world.base / request.param
    if request.param == "envoy":
        assert world.workload_agent.cfg.sds_socket is not None
        started = start_envoy_plane(
            world.spec, sds_socket=world.workload_agent.cfg.sds_socket, workdir=workdir
        )
    else:
        started = start_python_plane(
            world.spec, cert_dir=world.workload_agent.cfg.output_dir, workdir=workdir
        )
    try:
        yield started
    finally:
        started.stop()


# --------------------------------------------------------------------------- outcomes


def classify(result: Exchange) -> str:
    """mtls | plaintext | passthrough | refused | something unexpected, spelled out."""
    if not result.statuses:
        return "refused"
    if result.statuses[0] != 200 or not result.responses:
        return f"http {result.statuses[0]}"
    app_saw_tls = result.responses[0]["tls"]
    if result.server_cert is None:
        return "plaintext" if not app_saw_tls else "unexpected: app saw TLS from a plaintext client"
    if uri_sans(result.server_cert) == [WORKLOAD_ID] and not app_saw_tls:
        return "mtls"
    names = result.server_cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if app_saw_tls and [n.value for n in names] == [APP_COMMON_NAME]:
        return "passthrough"
    return f"unexpected: server {result.server_cert.subject.rfc4514_string()}, app saw TLS {app_saw_tls}"


def xfcc_fields(values: list[str] | None) -> dict[str, str] | None:
    """One XFCC element `By=..;Hash=..;URI=..` as a dict; None when the app got no header."""
    if values is None:
        return None
    assert len(values) == 1 and "," not in values[0], f"expected one XFCC element: {values}"
    pairs = (part.partition("=") for part in values[0].split(";"))
    return {key: value.strip('"') for key, _, value in pairs}


def diagnose(plane: DataPlane, result: Exchange) -> str:
    return f"{plane.name}: {result}\n{plane.log_tail()}"


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", ["http", "tcp"])
def test_outcome(plane: DataPlane, world: World, protocol: str, mode: str, client: str) -> None:
    role = f"{protocol}-{mode.lower()}"
    app_connections = world.apps[role].connections
    result = exchange(plane.listen_ports[world.app_ports[role]], tls=world.clients[client])
    assert classify(result) == EXPECTED[mode][client], diagnose(plane, result)
    if not result.responses:
        time.sleep(0.1)  # a data plane that connected anyway would have done so by now
        assert world.apps[role].connections == app_connections, (
            f"{plane.name}: a refused client reached the app"
        )
        return
    xfcc = xfcc_fields(result.responses[0]["xfcc"])
    if protocol == "http" and EXPECTED[mode][client] == "mtls":
        assert xfcc == {"By": WORKLOAD_ID, "Hash": world.client_hash, "URI": CLIENT_ID}, diagnose(
            plane, result
        )
    else:
        assert xfcc is None, diagnose(plane, result)


XFCC_CASES = [
    ("STRICT", "mesh"),
    ("PERMISSIVE", "mesh"),
    ("PERMISSIVE", "plaintext"),
    ("DISABLE", "plaintext"),
]


@pytest.mark.parametrize(("mode", "client"), XFCC_CASES)
def test_caller_xfcc_is_never_passed_on(plane: DataPlane, world: World, mode: str, client: str) -> None:
    """Forged XFCC on every request of a keep-alive connection: replaced by the data plane's own
    (mTLS) or removed (plaintext), on the first request and on later ones alike."""
    port = plane.listen_ports[world.app_ports[f"http-{mode.lower()}"]]
    forged = {"x-forwarded-client-cert": FORGED_XFCC}
    result = exchange(port, tls=world.clients[client], requests=[forged, forged, forged])
    assert result.statuses == [200, 200, 200], diagnose(plane, result)
    expected = (
        {"By": WORKLOAD_ID, "Hash": world.client_hash, "URI": CLIENT_ID}
        if EXPECTED[mode][client] == "mtls"
        else None
    )
    for response in result.responses:
        assert xfcc_fields(response["xfcc"]) == expected, diagnose(plane, result)


@pytest.mark.parametrize("client", ["mesh", "plaintext"])
def test_proxy_protocol_carries_the_peer(plane: DataPlane, world: World, client: str) -> None:
    """A --proxy-protocol TCP port: PROXY v2 with the caller's address; over mTLS also its SPIFFE ID."""
    port = plane.listen_ports[world.app_ports["tcp-proxy"]]
    result = exchange(port, tls=world.clients[client])
    assert classify(result) == EXPECTED["PERMISSIVE"][client], diagnose(plane, result)
    proxy = result.responses[0]["proxy"]
    assert proxy is not None, diagnose(plane, result)
    assert proxy["source"] == ["127.0.0.1", result.local_port], diagnose(plane, result)
    expected_tlv = CLIENT_ID if client == "mesh" else None
    assert proxy["tlvs"].get(SPIFFE_ID_TLV) == expected_tlv, diagnose(plane, result)


# --------------------------------------------------------------------------- a live mode change


def _plaintext_outcome(plane: DataPlane, world: World) -> str:
    return classify(exchange(plane.listen_ports[world.app_ports["http-change"]], tls=None))


def test_permissive_to_strict_without_a_restart(plane: DataPlane, world: World) -> None:
    port = plane.listen_ports[world.app_ports["http-change"]]
    assert _plaintext_outcome(plane, world) == "plaintext", plane.log_tail()
    pids = plane.pids()
    try:
        write_policy(world.namespace_file, namespace_policy("STRICT"))
        changed = time.monotonic()
        wait_until(
            lambda: _plaintext_outcome(plane, world) == "refused", 5, f"{plane.name} to refuse plaintext"
        )
        took = time.monotonic() - changed
        print(f"\n{plane.name}: PERMISSIVE -> STRICT took effect after {took:.2f} s")
        assert took < 2.5, f"{plane.name} took {took:.2f} s"
        mesh = exchange(port, tls=world.clients["mesh"])
        assert classify(mesh) == "mtls", diagnose(plane, mesh)
        assert plane.alive() and plane.pids() == pids
    finally:
        write_policy(world.namespace_file, namespace_policy("PERMISSIVE"))
        wait_until(
            lambda: _plaintext_outcome(plane, world) == "plaintext", 5, f"{plane.name} back to PERMISSIVE"
        )
    assert plane.alive() and plane.pids() == pids
