"""CA key material on disk: Istio cacerts directories, the state-dir root, atomic writes."""

from __future__ import annotations

import multiprocessing
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.common.clock import SystemClock
from ca.common.files import PUBLIC_MODE, SECRET_MODE, atomic_write
from ca.errors import CaMaterialError, ConfigError, ErrorKind
from ca.issuance.authority import fingerprint_sha256
from ca.issuance.cacerts import ISTIO_FILES, load_cacerts_dir
from ca.issuance.keys import KeyAlgorithm, PrivateKey, private_key_pem
from ca.issuance.selfsigned import RootFactory
from ca.server.state_dir import CA_CERT, CA_KEY, TRUST_BUNDLE, load_or_create_root, write_trust_bundle
from tests.support.clock import FakeClock
from tests.support.pki import Hierarchy, ec_key, make_hierarchy, pem


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return make_hierarchy()


@pytest.fixture(scope="module")
def other_hierarchy() -> Hierarchy:
    return make_hierarchy()


def _leaf_cert(issuer: x509.Certificate, issuer_key: PrivateKey, key: PrivateKey) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a CA")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def _error(directory: Path) -> CaMaterialError:
    with pytest.raises(CaMaterialError) as caught:
        load_cacerts_dir(directory)
    assert caught.value.kind is ErrorKind.CONFIG
    assert isinstance(caught.value, ConfigError)
    return caught.value


def test_istio_layout_with_an_intermediate_loads(hierarchy: Hierarchy, tmp_path: Path) -> None:
    authority = load_cacerts_dir(hierarchy.write_cacerts(tmp_path / "cacerts"))
    assert authority.signing_cert == hierarchy.signing
    assert authority.chain == (hierarchy.signing, hierarchy.intermediate)
    assert authority.roots == (hierarchy.root,)
    assert not authority.is_self_signed
    assert authority.source == str(tmp_path / "cacerts")
    assert authority.response_chain("LEAF") == [
        "LEAF",
        pem(hierarchy.signing).decode(),
        pem(hierarchy.intermediate).decode(),
        pem(hierarchy.root).decode(),
    ]


def test_istio_layout_where_the_root_signs_directly(tmp_path: Path) -> None:
    h = make_hierarchy()
    directory = tmp_path / "cacerts"
    directory.mkdir()
    (directory / "ca-cert.pem").write_bytes(pem(h.root))
    (directory / "ca-key.pem").write_bytes(private_key_pem(h.root_key))
    (directory / "cert-chain.pem").write_bytes(pem(h.root))
    (directory / "root-cert.pem").write_bytes(pem(h.root))
    authority = load_cacerts_dir(directory)
    assert authority.is_self_signed
    assert authority.response_chain("LEAF") == ["LEAF", pem(h.root).decode()]


@pytest.mark.parametrize("missing", ISTIO_FILES)
def test_any_one_missing_istio_file_is_named(missing: str, hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / missing).unlink()
    err = _error(directory)
    assert missing in err.message
    for present in set(ISTIO_FILES) - {missing}:
        assert f"{present} missing" not in err.message
    assert "all four" in err.message


def _write_tls(directory: Path, h: Hierarchy, *, with_intermediate: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    chain = pem(h.signing) + (pem(h.intermediate) if with_intermediate else b"")
    (directory / "tls.crt").write_bytes(chain)
    (directory / "tls.key").write_bytes(private_key_pem(h.signing_key))
    (directory / "ca.crt").write_bytes(pem(h.root))
    return directory


def test_tls_layout_loads(hierarchy: Hierarchy, tmp_path: Path) -> None:
    authority = load_cacerts_dir(_write_tls(tmp_path / "tls", hierarchy, with_intermediate=True))
    assert authority.signing_cert == hierarchy.signing
    assert authority.chain == (hierarchy.signing, hierarchy.intermediate)
    assert authority.roots == (hierarchy.root,)


def test_tls_layout_without_the_intermediate_does_not_reach_the_root(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    err = _error(_write_tls(tmp_path / "tls", hierarchy, with_intermediate=False))
    assert "does not lead to any root" in err.message


@pytest.mark.parametrize("missing", ["tls.crt", "tls.key", "ca.crt"])
def test_partial_tls_layout_is_refused(missing: str, hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = _write_tls(tmp_path / "tls", hierarchy, with_intermediate=True)
    (directory / missing).unlink()
    err = _error(directory)
    assert "holds no CA" in err.message
    assert missing in err.message


def test_key_not_matching_the_certificate_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "ca-key.pem").write_bytes(private_key_pem(ec_key()))
    err = _error(directory)
    assert "does not belong to the signing certificate" in err.message


def test_signing_certificate_that_is_not_a_ca_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    key = ec_key()
    not_ca = _leaf_cert(hierarchy.intermediate, hierarchy.intermediate_key, key)
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "ca-cert.pem").write_bytes(pem(not_ca))
    (directory / "ca-key.pem").write_bytes(private_key_pem(key))
    (directory / "cert-chain.pem").write_bytes(
        pem(not_ca) + pem(hierarchy.intermediate) + pem(hierarchy.root)
    )
    err = _error(directory)
    assert "is not a CA" in err.message
    assert "keyCertSign" in err.message


def test_chain_not_reaching_the_root_is_refused(
    hierarchy: Hierarchy, other_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "root-cert.pem").write_bytes(pem(other_hierarchy.root))
    err = _error(directory)
    assert "does not lead to any root" in err.message
    assert "root-cert.pem" in err.message


def test_chain_out_of_order_is_refused(
    hierarchy: Hierarchy, other_hierarchy: Hierarchy, tmp_path: Path
) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "cert-chain.pem").write_bytes(
        pem(hierarchy.signing) + pem(other_hierarchy.intermediate) + pem(hierarchy.root)
    )
    err = _error(directory)
    assert "is not signed by" in err.message


def test_garbage_certificate_file_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "root-cert.pem").write_text("not a certificate\n")
    err = _error(directory)
    assert "root-cert.pem" in err.message


def test_garbage_key_file_is_refused(hierarchy: Hierarchy, tmp_path: Path) -> None:
    directory = hierarchy.write_cacerts(tmp_path / "cacerts")
    (directory / "ca-key.pem").write_text("not a key\n")
    with pytest.raises(ConfigError) as caught:
        load_cacerts_dir(directory)
    assert "ca-key.pem" in caught.value.message


def test_empty_directory_holds_no_ca(tmp_path: Path) -> None:
    err = _error(tmp_path)
    assert "holds no CA" in err.message
    for name in ISTIO_FILES:
        assert name in err.message


def test_a_file_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file.pem"
    path.write_text("x")
    err = _error(path)
    assert "is not a directory" in err.message


def test_a_missing_path_is_not_a_directory(tmp_path: Path) -> None:
    assert "is not a directory" in _error(tmp_path / "nope").message


def _factory(trust_domain: str = "cluster.local", clock: Any = None) -> RootFactory:
    return RootFactory(
        trust_domain=trust_domain, key_algorithm=KeyAlgorithm.EC_P256, clock=clock or FakeClock()
    )


def test_root_is_created_once_and_reloaded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first, created = load_or_create_root(state, _factory())
    assert created
    second, created_again = load_or_create_root(state, _factory())
    assert not created_again
    assert second.signing_cert == first.signing_cert
    assert second.fingerprint == first.fingerprint
    assert private_key_pem(second.signing_key) == private_key_pem(first.signing_key)
    assert second.is_self_signed
    assert second.roots == (first.signing_cert,)


def test_root_files_have_the_right_modes(tmp_path: Path) -> None:
    load_or_create_root(tmp_path, _factory())
    assert stat.S_IMODE((tmp_path / CA_KEY).stat().st_mode) == SECRET_MODE
    assert stat.S_IMODE((tmp_path / CA_CERT).stat().st_mode) == PUBLIC_MODE


@pytest.mark.parametrize("keep", [CA_CERT, CA_KEY])
def test_partial_state_is_refused(keep: str, tmp_path: Path) -> None:
    load_or_create_root(tmp_path, _factory())
    gone = CA_KEY if keep == CA_CERT else CA_CERT
    (tmp_path / gone).unlink()
    with pytest.raises(CaMaterialError) as caught:
        load_or_create_root(tmp_path, _factory())
    assert gone in caught.value.message
    assert "only part of a CA" in caught.value.message
    assert not (tmp_path / gone).exists()


def test_trust_domain_mismatch_is_refused(tmp_path: Path) -> None:
    load_or_create_root(tmp_path, _factory("cluster.local"))
    with pytest.raises(CaMaterialError) as caught:
        load_or_create_root(tmp_path, _factory("example.org"))
    assert "'cluster.local'" in caught.value.message
    assert "'example.org'" in caught.value.message
    assert "--trust-domain" in caught.value.message


def test_corrupt_state_key_is_refused(tmp_path: Path) -> None:
    load_or_create_root(tmp_path, _factory())
    (tmp_path / CA_KEY).write_text("garbage")
    with pytest.raises(ConfigError) as caught:
        load_or_create_root(tmp_path, _factory())
    assert CA_KEY in caught.value.message


def test_state_key_not_matching_the_cert_is_refused(tmp_path: Path) -> None:
    load_or_create_root(tmp_path, _factory())
    (tmp_path / CA_KEY).write_bytes(private_key_pem(ec_key()))
    with pytest.raises(CaMaterialError) as caught:
        load_or_create_root(tmp_path, _factory())
    assert "does not belong" in caught.value.message


def _start_concurrently(state_dir: str, barrier: Any, results: Any) -> None:
    factory = RootFactory(
        trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=SystemClock()
    )
    barrier.wait(timeout=30)
    authority, created = load_or_create_root(Path(state_dir), factory)
    results.put((fingerprint_sha256(authority.signing_cert), created))


def test_concurrent_first_starts_agree_on_one_root(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = 4
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(target=_start_concurrently, args=(str(tmp_path), barrier, results))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in range(workers)]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    fingerprints = {fingerprint for fingerprint, _ in outcomes}
    assert len(fingerprints) == 1
    assert sum(created for _, created in outcomes) == 1
    on_disk, created = load_or_create_root(tmp_path, _factory())
    assert not created
    assert {on_disk.fingerprint} == fingerprints


def test_write_trust_bundle(tmp_path: Path, hierarchy: Hierarchy) -> None:
    authority = load_cacerts_dir(hierarchy.write_cacerts(tmp_path / "cacerts"))
    state = tmp_path / "state"
    path = write_trust_bundle(state, authority)
    assert path == state / TRUST_BUNDLE
    assert x509.load_pem_x509_certificates(path.read_bytes()) == [hierarchy.root]
    assert stat.S_IMODE(path.stat().st_mode) == PUBLIC_MODE


def test_write_trust_bundle_replaces_the_old_bundle(tmp_path: Path) -> None:
    first, _ = load_or_create_root(tmp_path / "a", _factory())
    second, _ = load_or_create_root(tmp_path / "b", _factory())
    write_trust_bundle(tmp_path, first)
    path = write_trust_bundle(tmp_path, second)
    assert x509.load_pem_x509_certificates(path.read_bytes()) == [second.signing_cert]


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name not in keep)


@pytest.mark.parametrize("mode", [SECRET_MODE, PUBLIC_MODE, 0o640])
def test_atomic_write_sets_the_mode(mode: int, tmp_path: Path) -> None:
    path = tmp_path / "file"
    atomic_write(path, b"data", mode=mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_bytes() == b"data"
    assert _leftovers(tmp_path, {"file"}) == []


def test_atomic_write_default_mode_is_public(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f", b"x")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == PUBLIC_MODE


def test_atomic_write_mode_ignores_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_atomic_write_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old contents that are longer")
    os.chmod(path, 0o666)
    atomic_write(path, b"new", mode=SECRET_MODE)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == SECRET_MODE
    assert _leftovers(tmp_path, {"file"}) == []


def test_atomic_write_replaces_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    reader = path.open("rb")
    try:
        atomic_write(path, b"new")
        assert reader.read() == b"old"
    finally:
        reader.close()
    assert path.read_bytes() == b"new"


def test_atomic_write_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file"
    atomic_write(path, b"x")
    assert path.read_bytes() == b"x"


def test_failed_atomic_write_leaves_no_temp_file_and_the_old_contents(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes", mode=SECRET_MODE)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"file"}) == []


def test_many_atomic_writes_leave_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    for i in range(20):
        atomic_write(path, str(i).encode())
    assert path.read_bytes() == b"19"
    assert _leftovers(tmp_path, {"file"}) == []


def test_created_root_key_is_the_cert_key(tmp_path: Path) -> None:
    authority, _ = load_or_create_root(tmp_path, _factory())
    assert isinstance(authority.signing_key, ec.EllipticCurvePrivateKey)
    cert_key = authority.signing_cert.public_key()
    assert isinstance(cert_key, ec.EllipticCurvePublicKey)
    assert cert_key.public_numbers() == authority.signing_key.public_key().public_numbers()
