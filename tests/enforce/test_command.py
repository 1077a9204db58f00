"""`meshca enforce` as a command: configuration errors, environment settings, metrics, SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.agent.output import write_svid
from ca.cli.main import main
from tests.support.agent import REPO, local_http_get, wait_until
from tests.support.clock import FakeClock
from tests.support.ports import read_ports_file
from tests.support.svids import make_svid

pytestmark = pytest.mark.slow


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    environ.update(env or {}, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "ca.cli", "enforce", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        cwd=REPO,
        check=False,
    )


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    write_svid(directory, make_svid(FakeClock()))
    return directory


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --inbound"),
        (["--inbound", "15006"], "has no ':'"),
        (["--inbound", "15006:8080/udp"], "not http or tcp"),
        (["--inbound", "15006:8080", "--namespace", "a"], "give --policies"),
        (["--outbound", "15001:backend"], "--outbound '15001:backend' is malformed"),
        (["--outbound", "1:h:2", "--trust-domain", "Not Valid"], "not a valid SPIFFE trust domain"),
        (["--outbound", "1:h:2", "--metrics-listen", "nowhere"], "not a listen address"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["enforce", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("meshca: error: ")
    assert message in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--inbound", "{port}:8080"),
        ("--outbound", "{port}:backend.shop:8443"),
        ("--metrics-listen", "{address}"),
    ],
)
def test_a_port_in_use_stops_it_with_one_line(cert_dir: Path, policies: Path, flag: str, value: str) -> None:
    """Before it waits for certificates or logs anything; the other ports are free ones."""
    with socket.create_server(("127.0.0.1", 0)) as busy:
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        flags = {
            "--inbound": "0:8080",
            "--outbound": "0:backend.shop:8443",
            "--listen-host": "127.0.0.1",
            "--cert-dir": str(cert_dir.parent / "no-certificates-yet"),
            "--namespace": "shop",
            "--policies": str(policies),
            "--metrics-listen": "127.0.0.1:0",
            flag: value.format(port=busy.getsockname()[1], address=address),
        }
        result = run_cli([item for pair in flags.items() for item in pair])
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"meshca: error: {flag} {address}: the address is already in use by another process; "
        f"stop that process or give {flag} another port (port 0 picks a free one)\n"
    )


@pytest.fixture
def enforcer_process(
    cert_dir: Path, policies: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """`meshca enforce` configured through the environment only, on free ports."""
    ports_file = tmp_path / "enforce.ports"
    (policies / "strict.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    environ.update(
        PYTHONPATH=str(REPO),
        MESHCA_INBOUND="0:8080",
        MESHCA_OUTBOUND="0:backend.shop:8443",
        MESHCA_LISTEN_HOST="127.0.0.1",
        MESHCA_CERT_DIR=str(cert_dir),
        MESHCA_NAMESPACE="shop",
        MESHCA_POLICIES=str(policies),
        MESHCA_METRICS_LISTEN="127.0.0.1:0",
        MESHCA_PORTS_FILE=str(ports_file),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "ca.cli", "enforce"],
        env=environ,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ports = read_ports_file(ports_file, proc)
        (inbound,), (outbound,) = ports["inbound"], ports["outbound"]
        assert inbound["app_port"] == 8080 and inbound["protocol"] == "tcp"
        assert outbound["target"] == "backend.shop:8443"
        assert 0 not in (inbound["listen_port"], outbound["listen_port"], ports["metrics"])
        yield proc, inbound["listen_port"], ports["metrics"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_runs_from_the_environment_serves_metrics_and_stops_on_sigterm(
    enforcer_process: tuple[subprocess.Popen[bytes], int, int], tmp_path: Path
) -> None:
    proc, listen, metrics = enforcer_process
    wait_until(lambda: local_http_get(metrics, "/healthz/ready")[0] == 200, 20, "the enforcer ready")
    with socket.create_connection(("127.0.0.1", listen), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plaintext to a STRICT port
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
    status, body = local_http_get(metrics, "/metrics")
    assert status == 200
    assert 'meshca_enforcer_connections_total{mode="STRICT",outcome="refused",port=' in body
    assert "meshca_policy_policies_loaded" in body  # the policy source's metrics, same endpoint
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not (tmp_path / "enforce.ports").exists()  # its ports are no longer its
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert '"msg": "connection refused"' in log and '"reason": "plaintext"' in log
    assert '"peer": "127.0.0.1:' in log
