"""Switching an Istio mesh onto meshca, each step the README's "Switching Istio to meshca" names,
against the real API server (v1.24, ../shared/kube) with `meshca serve` as a subprocess:

- an `istio-ca-secret` shaped as istiod's self-signed CA writes it (type `istio.io/ca-root`;
  `ca-cert.pem`, `ca-key.pem` (PKCS#1 RSA-2048), `root-cert.pem`, and `cert-chain.pem`/`key.pem`
  present but empty) is adopted: meshca's leaves chain to that root, `istio-ca-root-cert` holds
  exactly istiod's value (byte for byte, so the two writers agree), a ConfigMap of istiod's in a
  namespace is taken over, and after a keyring transition and meshca's stop the Secret still
  holds every entry istiod reads, unchanged (rollback);
- a `cacerts` Secret (a plugged-in root and intermediate, the layout Istio's plug-in guide
  makes) mounted as the `--cacerts` directory: meshca's leaves chain to that root, and a workload
  holding a leaf istiod signed with the same intermediate and one holding meshca's leaf complete
  a mutual TLS handshake, each trusting the other with the roots it was given;
- istiod's root kept in `cacerts` (USE_CACERTS_FOR_SELF_SIGNED_CA) is adopted with
  `--ca-secret cacerts`, while a plugged-in intermediate in a CA Secret is refused, pointing at
  --cacerts.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ca.errors import CaMaterialError
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import RotationPolicy
from ca.kube import client as kube
from ca.kube.keyring_secret import KeyringSecret
from ca.kube.root_configmap import CONFIGMAP_NAME, ROOT_CERT_KEY
from tests.support.clock import FakeClock
from tests.support.kube_apiserver import real_apiserver
from tests.support.ledger import MESHCA, _server_env
from tests.support.ports import read_ports_file
from tests.support.validate import verify_path

pytestmark = pytest.mark.slow

CA_NAMESPACE = "istio-system"
TRUST_DOMAIN = "cluster.local"
WAIT_S = 20.0
ISTIOD_ENTRIES = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "key.pem", "root-cert.pem")


# --------------------------------------------------------------------------- Istio's material


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """PKCS#1 ("RSA PRIVATE KEY"), as Go's x509.MarshalPKCS1PrivateKey in istiod writes it."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )


def _serial() -> int:
    return secrets.randbits(127) | 1


def istiod_root(now: dt.datetime, org: str = TRUST_DOMAIN) -> Ca:
    """A root as istiod's self-signed CA makes it: RSA-2048, subject O=<trust domain>, ten years,
    key usage keyCertSign and basic constraints CA (both critical, as Go marks them), a subject key
    id (Go adds one to CA certificates), no authority key id (self-signed)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Ca(cert, key)


def plugged_in_intermediate(root: Ca, now: dt.datetime, cluster: str) -> Ca:
    """An intermediate under `root`, as Istio's plug-in CA guide makes one per cluster."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Istio"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate CA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, cluster),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=730))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(root), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return Ca(cert, key)


def istiod_leaf(
    signer: Ca, spiffe_id: str, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A workload certificate in istiod's profile: empty subject, the SPIFFE ID as the one (critical)
    URI SAN, digitalSignature + keyEncipherment, serverAuth + clientAuth, backdated two minutes."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signer.cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - dt.timedelta(minutes=2))
        .not_valid_after(now + dt.timedelta(hours=24))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(_aki(signer), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .sign(signer.key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(issuer: Ca) -> x509.AuthorityKeyIdentifier:
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def istiod_ca_secret(root: Ca) -> client.V1Secret:
    """`istio-ca-secret` as istiod's self-signed CA creates it (security/pkg/pki/ca:
    BuildSecret(name, ns, nil, nil, pemCert, pemCert, pemKey, "istio.io/ca-root")): the root in
    `ca-cert.pem` and `root-cert.pem`, its key in `ca-key.pem`, `cert-chain.pem` and `key.pem`
    empty."""
    data = {
        "ca-cert.pem": root.cert_pem,
        "ca-key.pem": root.key_pem,
        "cert-chain.pem": b"",
        "key.pem": b"",
        "root-cert.pem": root.cert_pem,
    }
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name="istio-ca-secret", namespace=CA_NAMESPACE),
        type="istio.io/ca-root",
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )


def istiod_root_configmap(namespace: str, root_pem: str) -> client.V1ConfigMap:
    """`istio-ca-root-cert` as istiod's namespace controller writes it."""
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(
            name=CONFIGMAP_NAME, namespace=namespace, labels={"istio.io/config": "true"}
        ),
        data={ROOT_CERT_KEY: root_pem},
    )


# --------------------------------------------------------------------------- the cluster side


def secret_data(core: client.CoreV1Api, name: str) -> tuple[str, dict[str, bytes]]:
    found = core.read_namespaced_secret(name, CA_NAMESPACE)
    return str(found.type), {k: base64.b64decode(v) for k, v in (found.data or {}).items()}


def root_configmap(core: client.CoreV1Api, namespace: str) -> str | None:
    try:
        return (core.read_namespaced_config_map(CONFIGMAP_NAME, namespace).data or {}).get(ROOT_CERT_KEY)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def eventually(check: Callable[[], bool], what: str, log: Path, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {timeout_s}s: {what}\n{log.read_text(errors='replace')[-6000:]}"
            )
        time.sleep(0.05)


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log: Path
    ports: dict[str, int]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def meshca_serve(kubeconfig: Path, workdir: Path, *extra: str) -> Iterator[Serve]:
    workdir.mkdir(parents=True, exist_ok=True)
    state, log, ports_file = workdir / "state", workdir / "serve.log", workdir / "serve.ports"
    argv = [
        *(*MESHCA, "serve", "--kubeconfig", str(kubeconfig), "--trust-domain", TRUST_DOMAIN),
        *("--state-dir", str(state), "--ports-file", str(ports_file), "--ca-namespace", CA_NAMESPACE),
        *("--listen", "127.0.0.1:0", "--renew-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"),
        *extra,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_server_env()
        )
    serve = Serve(proc, state, log, {})
    try:
        serve.ports = read_ports_file(ports_file, proc, timeout=60, log=log)
        yield serve
    finally:
        serve.stop()


def meshca_leaf(api: client.ApiClient, serve: Serve, workdir: Path, namespace: str, account: str) -> Path:
    """A pod's certificate from meshca through `meshca agent --once`, with a bound token of the pod
    (audience istio-ca) as Istio's agent sends it; returns the agent's output directory."""
    core = client.CoreV1Api(api)
    with contextlib.suppress(ApiException):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=account))
    )
    pod = core.create_namespaced_pod(
        namespace,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"{account}-0"),
            spec=client.V1PodSpec(
                service_account_name=account,
                automount_service_account_token=False,
                containers=[client.V1Container(name="app", image=f"example.com/{account}:1")],
            ),
        ),
    )
    assert pod.metadata is not None
    answer = core.create_namespaced_service_account_token(
        account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=["istio-ca"],
                expiration_seconds=3600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", name=f"{account}-0", uid=pod.metadata.uid
                ),
            )
        ),
    )
    assert answer.status is not None
    token, out = workdir / f"{account}.token", workdir / f"{account}-certs"
    token.write_text(str(answer.status.token))
    agent = subprocess.run(
        [
            *(*MESHCA, "agent", "--once", "on", "--ca-addr", f"127.0.0.1:{serve.ports['grpc']}"),
            *(
                "--ca-server-name",
                "meshca.istio-system.svc",
                "--ca-root",
                str(serve.state_dir / "root-cert.pem"),
            ),
            *("--token-file", str(token), "--output-dir", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=_server_env(),
    )
    assert agent.returncode == 0, agent.stdout + agent.stderr + serve.log.read_text(errors="replace")[-4000:]
    return out


def pems(data: bytes | str) -> list[str]:
    raw = data.encode() if isinstance(data, str) else data
    return [c.public_bytes(serialization.Encoding.PEM).decode() for c in x509.load_pem_x509_certificates(raw)]


def chains_to(cert_chain_pem: bytes, root_pem: bytes, now: dt.datetime) -> list[x509.GeneralName]:
    """RFC 5280 path validation of a workload's cert-chain.pem with only `root_pem` trusted."""
    root = pems(root_pem)[0]
    chain = [c for c in pems(cert_chain_pem) if c != root]
    return verify_path([*chain, root], now)


def run_meshca(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHCA, *args], capture_output=True, text=True, timeout=60, env=_server_env())


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# --------------------------------------------------------------------------- the switch, step by step


def test_istiods_ca_secret_is_adopted_its_root_signs_and_istiod_can_take_it_back(tmp_path: Path) -> None:
    now = utcnow()
    root = istiod_root(now - dt.timedelta(days=30))
    with real_apiserver(tmp_path / "kube") as admin:
        api = kube.api_client(admin, in_cluster=False)
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=CA_NAMESPACE)))
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="shop")))
        core.create_namespaced_secret(CA_NAMESPACE, istiod_ca_secret(root))
        _, before = secret_data(core, "istio-ca-secret")
        assert before["cert-chain.pem"] == b"" and before["key.pem"] == b""  # stored, and empty
        # istiod's ConfigMap in a namespace, with a root of an earlier istiod (so a rewrite shows).
        earlier = istiod_root(now - dt.timedelta(days=400)).cert_pem.decode()
        core.create_namespaced_config_map("shop", istiod_root_configmap("shop", earlier))

        with meshca_serve(admin, tmp_path / "meshca", "--ca-store", "secret") as serve:
            log = serve.log
            # meshca publishes Istio's root, byte for byte what istiod writes (its ca-cert.pem),
            # and takes over istiod's ConfigMap in `shop`.
            eventually(
                lambda: root_configmap(core, "shop") == root.cert_pem.decode(), "Istio's root in shop", log
            )
            eventually(
                lambda: root_configmap(core, "default") == root.cert_pem.decode(),
                "Istio's root in default",
                log,
            )
            stored = core.read_namespaced_config_map(CONFIGMAP_NAME, "shop")
            assert stored.metadata is not None
            assert (stored.metadata.labels or {}).get("istio.io/config") == "true"

            # A workload moved to meshca gets a leaf under Istio's root.
            out = meshca_leaf(api, serve, tmp_path, "shop", "cart")
            names = chains_to((out / "cert-chain.pem").read_bytes(), root.cert_pem, utcnow())
            assert x509.UniformResourceIdentifier("spiffe://cluster.local/ns/shop/sa/cart") in names
            assert (out / "root-cert.pem").read_text() == root.cert_pem.decode()

            # The keyring transition the schedule makes at once (a signing CA under the adopted
            # root, prepared in slot 2) rewrites the Secret; the trust bundle stays Istio's root
            # alone, still byte for byte istiod's value.
            eventually(
                lambda: "slot-2.ca-cert.pem" in secret_data(core, "istio-ca-secret")[1],
                "slot 2 in the Secret",
                log,
            )
            slot2 = x509.load_pem_x509_certificate(
                secret_data(core, "istio-ca-secret")[1]["slot-2.ca-cert.pem"]
            )
            assert slot2.issuer == root.cert.subject
            assert root_configmap(core, "shop") == root.cert_pem.decode()
        assert serve.proc.returncode == 0, log.read_text(errors="replace")[-4000:]

        # Rollback: with meshca stopped, the Secret still holds what istiod reads (its type, and
        # ca-cert.pem/ca-key.pem as istiod wrote them), so istiod loads the same root again.
        kind, after = secret_data(core, "istio-ca-secret")
        assert kind == "istio.io/ca-root"
        assert {k: after[k] for k in ISTIOD_ENTRIES} == {k: before[k] for k in ISTIOD_ENTRIES}
        cert = x509.load_pem_x509_certificate(after["ca-cert.pem"])
        key = serialization.load_pem_private_key(after["ca-key.pem"], password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        public = cert.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.public_numbers() == key.public_key().public_numbers()
        # ...and a leaf istiod signs after the rollback is trusted by the workload meshca served,
        # whose root file is Istio's root.
        leaf, _ = istiod_leaf(Ca(cert, key), "spiffe://cluster.local/ns/shop/sa/web", utcnow())
        chains_to(
            leaf.public_bytes(serialization.Encoding.PEM), (out / "root-cert.pem").read_bytes(), utcnow()
        )


def test_a_cacerts_secret_mounted_as_the_cacerts_directory_makes_meshca_and_istiod_leaves_trust_each_other(
    tmp_path: Path,
) -> None:
    now = utcnow()
    root = istiod_root(now - dt.timedelta(days=30), org="Istio")
    intermediate = plugged_in_intermediate(root, now - dt.timedelta(days=30), "cluster1")
    files = {
        "ca-cert.pem": intermediate.cert_pem,
        "ca-key.pem": intermediate.key_pem,
        "root-cert.pem": root.cert_pem,
        "cert-chain.pem": intermediate.cert_pem + root.cert_pem,
    }
    with real_apiserver(tmp_path / "kube") as admin:
        api = kube.api_client(admin, in_cluster=False)
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=CA_NAMESPACE)))
        core.create_namespaced_secret(
            CA_NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="cacerts"),
                type="Opaque",
                data={k: base64.b64encode(v).decode() for k, v in files.items()},
            ),
        )
        # The Secret mounted as a directory, as the kubelet does it: one file per key.
        cacerts = tmp_path / "cacerts"
        cacerts.mkdir()
        for name, value in secret_data(core, "cacerts")[1].items():
            (cacerts / name).write_bytes(value)

        with meshca_serve(admin, tmp_path / "meshca", "--cacerts", str(cacerts)) as serve:
            eventually(
                lambda: root_configmap(core, "default") == root.cert_pem.decode(),
                "the plugged-in root in istio-ca-root-cert",
                serve.log,
            )
            out = meshca_leaf(api, serve, tmp_path, "shop", "cart")
        meshca_chain = (out / "cert-chain.pem").read_bytes()
        chains_to(meshca_chain, root.cert_pem, utcnow())
        assert (out / "root-cert.pem").read_bytes() == root.cert_pem

        # A workload still on istiod (same cacerts, so the same intermediate) and one on meshca.
        web, web_key = istiod_leaf(intermediate, "spiffe://cluster.local/ns/shop/sa/web", utcnow())
        istiod_workload = tmp_path / "web"
        istiod_workload.mkdir()
        (istiod_workload / "cert-chain.pem").write_bytes(
            web.public_bytes(serialization.Encoding.PEM) + intermediate.cert_pem
        )
        (istiod_workload / "key.pem").write_bytes(
            web_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (istiod_workload / "root-cert.pem").write_bytes(root.cert_pem)  # istiod's istio-ca-root-cert

        # Both directions: meshca's workload serving, istiod's calling; then the other way round.
        assert mutual_tls(server=out, client_dir=istiod_workload) == (
            "spiffe://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop/sa/cart",
        )
        assert mutual_tls(server=istiod_workload, client_dir=out) == (
            "spiffe://cluster.local/ns/shop/sa/cart",
            "spiffe://cluster.local/ns/shop/sa/web",
        )


def _uri_san(der: bytes | None) -> str:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


def _context(purpose: ssl.Purpose, certs: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    context.check_hostname = False  # SPIFFE identities are URI SANs; the names are compared below
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
    context.load_verify_locations(cafile=str(certs / "root-cert.pem"))
    return context


def mutual_tls(*, server: Path, client_dir: Path) -> tuple[str, str]:
    """A real mutual TLS handshake on loopback between two workloads' certificate directories,
    each trusting only its own root-cert.pem; returns (identity the server saw, identity the
    client saw)."""
    server_context = _context(ssl.Purpose.CLIENT_AUTH, server)
    client_context = _context(ssl.Purpose.SERVER_AUTH, client_dir)
    seen: dict[str, str] = {}
    failures: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            try:
                conn, _ = listener.accept()
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    seen["server"] = _uri_san(tls.getpeercert(binary_form=True))
                    tls.sendall(b"ok")
            except BaseException as err:  # reported by the test thread
                failures.append(err)

        thread = threading.Thread(target=accept)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_context.wrap_socket(raw) as tls,
        ):
            seen["client"] = _uri_san(tls.getpeercert(binary_form=True))
            assert tls.recv(2) == b"ok"
        thread.join(timeout=10)
    assert not failures, failures
    return seen["server"], seen["client"]


def test_istiods_root_in_cacerts_is_adopted_but_a_plugged_in_intermediate_is_not(tmp_path: Path) -> None:
    """istiod with USE_CACERTS_FOR_SELF_SIGNED_CA writes its self-signed root to the Secret `cacerts`
    (the same keys plus `istio-generated`): meshca adopts it given `--ca-secret cacerts`. A
    `cacerts` of Istio's plug-in layout holds an intermediate in ca-cert.pem: adopting it would
    publish the intermediate as the root, so it is refused, pointing at --cacerts, and left as it
    was."""
    now = utcnow()
    clock = FakeClock(now)
    factory = RootFactory(trust_domain=TRUST_DOMAIN, key_algorithm=KeyAlgorithm.EC_P256, clock=clock)
    policy = RotationPolicy(max_leaf_ttl=dt.timedelta(days=1))
    root = istiod_root(now - dt.timedelta(days=30))
    intermediate = plugged_in_intermediate(root, now - dt.timedelta(days=30), "cluster1")
    with real_apiserver(tmp_path / "kube") as admin:
        api = kube.api_client(admin, in_cluster=False)
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=CA_NAMESPACE)))
        generated = istiod_ca_secret(root)
        assert generated.metadata is not None and generated.data is not None
        generated.metadata.name = "cacerts"
        generated.data["istio-generated"] = ""
        core.create_namespaced_secret(CA_NAMESPACE, generated)
        stored, what = KeyringSecret(api, namespace=CA_NAMESPACE, name="cacerts").load_or_create(
            factory, policy, clock
        )
        assert what == "adopted"
        assert [r.fingerprint(hashes.SHA256()) for r in stored.keyring.bundle()] == [
            root.cert.fingerprint(hashes.SHA256())
        ]
        assert "istio-generated" in secret_data(core, "cacerts")[1]

        plugged = {
            "ca-cert.pem": intermediate.cert_pem,
            "ca-key.pem": intermediate.key_pem,
            "root-cert.pem": root.cert_pem,
            "cert-chain.pem": intermediate.cert_pem + root.cert_pem,
        }
        core.create_namespaced_secret(
            CA_NAMESPACE,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="plugged"),
                type="Opaque",
                data={k: base64.b64encode(v).decode() for k, v in plugged.items()},
            ),
        )
        with pytest.raises(CaMaterialError, match=r"not a self-signed root.*--cacerts DIR"):
            KeyringSecret(api, namespace=CA_NAMESPACE, name="plugged").load_or_create(factory, policy, clock)
        assert secret_data(core, "plugged")[1] == plugged
