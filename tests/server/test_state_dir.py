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

from ca.common.clock import SystemClock
from ca.common.files import PUBLIC_MODE
from ca.errors import ConfigError
from ca.issuance.authority import fingerprint_sha256
from ca.issuance.cacerts import load_cacerts_dir
from ca.issuance.keys import KeyAlgorithm
from ca.issuance.selfsigned import RootFactory
from ca.issuance.slots import RotationPolicy
from ca.server.keyring_store import KeyringDirectory
from ca.server.state_dir import TRUST_BUNDLE, prepare, write_trust_bundle
from tests.support.clock import FakeClock
from tests.support.pki import Hierarchy, make_hierarchy

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


# Port 0 on every listener: the state directory is checked after the ports, and this machine's
# 15012-15014 may be taken by another meshca.
SERVE_ON_FREE_PORTS = [
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--renew-listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
]
TOKEN = ["token", "--namespace", "shop", "--service-account", "cart"]


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("meshca: error: ")
    return lines[0]


@pytest.mark.parametrize("command", [SERVE_ON_FREE_PORTS, TOKEN], ids=["serve", "token"])
def test_state_dir_naming_a_file(world_readable_dir: Path, command: list[str]) -> None:
    (world_readable_dir / "state").write_text("x")
    line = _one_error_line(_meshca(*command, "--state-dir", "state", cwd=world_readable_dir))
    assert "--state-dir state is a file, not a directory" in line
    assert [p.name for p in world_readable_dir.iterdir()] == ["state"]


@pytest.mark.parametrize("command", [SERVE_ON_FREE_PORTS, TOKEN], ids=["serve", "token"])
def test_state_dir_under_an_unwritable_parent(world_readable_dir: Path, command: list[str]) -> None:
    parent = world_readable_dir / "locked"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    line = _one_error_line(_meshca(*command, "--state-dir", str(parent / "state"), cwd=world_readable_dir))
    assert f"cannot create the state directory {parent / 'state'} (Permission denied)" in line
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("command", [SERVE_ON_FREE_PORTS, TOKEN], ids=["serve", "token"])
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


def _start_concurrently(state_dir: str, barrier: Any, results: Any) -> None:
    clock = SystemClock()
    factory = RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.EC_P256, clock=clock)
    barrier.wait(timeout=30)
    stored, what = KeyringDirectory(Path(state_dir)).load_or_create(factory, RotationPolicy(), clock)
    results.put((fingerprint_sha256(stored.keyring.active.root), what == "created"))


def test_concurrent_first_starts_agree_on_one_keyring(tmp_path: Path) -> None:
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
    on_disk, what = KeyringDirectory(tmp_path).load_or_create(_factory(), RotationPolicy(), FakeClock())
    assert what == "loaded"
    assert {fingerprint_sha256(on_disk.keyring.active.root)} == fingerprints


def test_write_trust_bundle(tmp_path: Path, hierarchy: Hierarchy) -> None:
    authority = load_cacerts_dir(hierarchy.write_cacerts(tmp_path / "cacerts"))
    state = tmp_path / "state"
    path = write_trust_bundle(state, authority)
    assert path == state / TRUST_BUNDLE
    assert x509.load_pem_x509_certificates(path.read_bytes()) == [hierarchy.root]
    assert stat.S_IMODE(path.stat().st_mode) == PUBLIC_MODE


def test_write_trust_bundle_replaces_the_old_bundle(tmp_path: Path) -> None:
    first, second = _factory().create("a"), _factory().create("b")
    write_trust_bundle(tmp_path, first)
    path = write_trust_bundle(tmp_path, second)
    assert x509.load_pem_x509_certificates(path.read_bytes()) == [second.signing_cert]
