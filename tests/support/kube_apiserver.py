"""The real Kubernetes API server of ../shared/kube (v1.24, etcd on loopback), for tests that must
see what a real API server does with a request.

`real_apiserver(directory)` starts one (about 5 s) with the shared `start-apiserver` script and
yields its cluster-admin kubeconfig; it is stopped afterwards. Without the script, the server
binary or etcd the tests are skipped with the reason; under CI (CI=true) that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Beside the repository, as ../shared/kube; MESHCA_TEST_KUBE names another place.
KUBE_DIR = Path(os.environ.get("MESHCA_TEST_KUBE") or Path(__file__).resolve().parents[3] / "shared" / "kube")
START = KUBE_DIR / "start-apiserver"
START_TIMEOUT_S = 120


def real_apiserver_problem() -> str | None:
    if not START.is_file() or not (KUBE_DIR / "kube-apiserver").is_file():
        return f"no real API server at {KUBE_DIR} (start-apiserver and kube-apiserver)"
    if shutil.which("etcd") is None:
        return "etcd is not installed (apt-get install -y etcd-server)"
    return None


def require_real_apiserver() -> None:
    problem = real_apiserver_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the real API server is required under CI: {problem}")
    pytest.skip(problem)


@contextlib.contextmanager
def real_apiserver(directory: Path) -> Iterator[Path]:
    """A running API server; yields its admin kubeconfig."""
    require_real_apiserver()
    directory.mkdir(parents=True, exist_ok=True)
    started = subprocess.run(
        ["bash", str(START), str(directory)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"start-apiserver failed: {started.stderr.strip() or started.stdout.strip()}")
        yield directory / "admin.kubeconfig"
    finally:
        subprocess.run(["bash", str(START), "--stop", str(directory)], timeout=30, check=False)
