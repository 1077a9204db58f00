"""The state directory: checked before anything is written into it; the root it keeps is created once and
reloaded; the trust bundle written beside it."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca.common.clock import SystemClock
from ca.common.files import PUBLIC_MODE, SECRET_MODE
from ca.errors import CaMaterialError, ConfigError
from ca.issuance.authority import fingerprint_sha256
from ca.issuance.cacerts import load_cacerts_dir
from ca.issuance.keys import KeyAlgorithm, private_key_pem
from ca.issuance.selfsigned import RootFactory
from ca.server.state_dir import (
    CA_CERT,
    CA_KEY,
    TRUST_BUNDLE,
    load_or_create_root,
    prepare,
    write_trust_bundle,
)
from tests.support.clock import FakeClock
from tests.support.pki import Hierarchy, ec_key, make_hierarchy

MESHCA = [sys.executable, "-m", "ca.cli"]
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
REPO = Path(__file__).resolve().parents[2]


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert prepare(target) == target
    assert target.is_dir()
    assert list(target.iterdir()) == []


def test_a_file_in_place_of_the_directory_is_named(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"is a file, not a directory"):
        prepare(target)


def test_a_file_in_place_of_a_parent_is_named(tmp_path: Path) -> None:
    (tmp_path / "parent").write_text("")
    with pytest.raises(ConfigError, match=r"cannot create the state directory .*a file stands where"):
        prepare(tmp_path / "parent" / "state")


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory that an unprivileged user can reach (pytest's own tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="meshca-state-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in sorted(path.rglob("*"), reverse=True):
            child.chmod(0o700)
        subprocess.run(["rm", "-rf", str(path)], check=True)


def _unprivileged() -> Callable[[], None] | None:
    """Permission bits bind root only without CAP_DAC_OVERRIDE: the child execs without it."""
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return drop


def _meshca(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MESHCA_LISTEN": "127.0.0.1:0"}
    return subprocess.run(
        [*MESHCA, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_unprivileged(),
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshca: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "command", [["serve"], ["token", "--namespace", "shop", "--service-account", "cart"]]
)
def test_state_dir_naming_a_file(world_readable_dir: Path, command: list[str]) -> None:
    (world_readable_dir / "state").write_text("x")
    line = _one_error_line(_meshca(*command, "--state-dir", "state", cwd=world_readable_dir))
    assert "--state-dir state is a file, not a directory" in line
    assert [p.name for p in world_readable_dir.iterdir()] == ["state"]


@pytest.mark.parametrize(
    "command", [["serve"], ["token", "--namespace", "shop", "--service-account", "cart"]]
)
def test_state_dir_under_an_unwritable_parent(world_readable_dir: Path, command: list[str]) -> None:
    parent = world_readable_dir / "locked"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    line = _one_error_line(_meshca(*command, "--state-dir", str(parent / "state"), cwd=world_readable_dir))
    assert f"cannot create the state directory {parent / 'state'} (Permission denied)" in line
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize(
    "command", [["serve"], ["token", "--namespace", "shop", "--service-account", "cart"]]
)
def test_existing_state_dir_that_is_not_writable(world_readable_dir: Path, command: list[str]) -> None:
    state = world_readable_dir / "state"
    state.mkdir()
    state.chmod(0o555)
    line = _one_error_line(_meshca(*command, "--state-dir", str(state), cwd=world_readable_dir))
    assert f"the state directory {state} is not writable (Permission denied)" in line
    assert "ledger" not in line
    assert list(state.iterdir()) == []


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return make_hierarchy()


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


def test_created_root_key_is_the_cert_key(tmp_path: Path) -> None:
    authority, _ = load_or_create_root(tmp_path, _factory())
    assert isinstance(authority.signing_key, ec.EllipticCurvePrivateKey)
    cert_key = authority.signing_cert.public_key()
    assert isinstance(cert_key, ec.EllipticCurvePublicKey)
    assert cert_key.public_numbers() == authority.signing_key.public_key().public_numbers()
