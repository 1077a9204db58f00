"""The `meshca` command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from tests.support.pki import ec_key, make_csr
from tests.support.validate import assert_valid_svid

MESHCA = [sys.executable, "-m", "ca.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[str], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"meshca exited early: {process.stderr.read() if process.stderr else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """`meshca serve` with no flags at all; ports moved off the defaults through the environment."""
    port = free_port()
    env = {
        **os.environ,
        "MESHCA_LISTEN": f"127.0.0.1:{port}",
        "MESHCA_RENEW_LISTEN": f"127.0.0.1:{free_port()}",
        "MESHCA_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
    }
    process = subprocess.Popen([*MESHCA, "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(port, process)
        yield process, port, tmp_path
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_serve_on_defaults_issues_to_a_dev_token(served: tuple[subprocess.Popen[str], int, Path]) -> None:
    process, port, cwd = served
    token = subprocess.run(
        [*MESHCA, "token", "--namespace", "shop", "--service-account", "cart"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    bundle = (cwd / "meshca-state" / "root-cert.pem").read_bytes()
    assert oct((cwd / "meshca-state" / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(bundle),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    key = ec_key()
    with channel:
        response = istio_ca_pb2_grpc.IstioCertificateServiceStub(channel).CreateCertificate(
            istio_ca_pb2.IstioCertificateRequest(csr=make_csr(key)),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=10,
        )
    from datetime import UTC, datetime

    assert_valid_svid(
        list(response.cert_chain), key, "spiffe://cluster.local/ns/shop/sa/cart", datetime.now(UTC)
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    logs = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]  # type: ignore[union-attr]
    messages = [entry["msg"] for entry in logs]
    assert "CA created" in messages and "issued certificate" in messages
    assert not any(token in line for line in map(json.dumps, logs))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHCA, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["serve", "--cacerts", "missing-dir"], "is not a directory"),
        (["serve", "--default-ttl", "100d"], "longer than --max-ttl"),
        (["serve", "--default-ttl", "soon"], "not a duration"),
        (["serve", "--trust-domain", "Bad_Domain!"], "trust domain"),
        (["serve", "--ca-key-type", "dsa"], "unknown key type"),
        (["serve", "--auth", "tokenreview"], "needs cluster access"),
        (["serve", "--listen", "nowhere"], "not a listen address"),
        (["token", "--namespace", "a", "--service-account", "b", "--pod-name", "p"], "--pod-uid"),
    ],
)
def test_configuration_errors_exit_2_with_one_clear_line(tmp_path: Path, args: list[str], words: str) -> None:
    result = (
        _run(*args, "--state-dir", str(tmp_path / "s"), cwd=tmp_path)
        if args[0] == "token"
        else _run(
            *args,
            "--state-dir",
            str(tmp_path / "s"),
            "--renew-listen",
            "off",
            "--metrics-listen",
            "off",
            cwd=tmp_path,
        )
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("meshca: error:") and words in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run(
            "serve",
            "--state-dir",
            str(tmp_path),
            "--listen",
            f"127.0.0.1:{port}",
            "--renew-listen",
            "off",
            "--metrics-listen",
            "off",
            cwd=tmp_path,
        )
    assert result.returncode == 2 and "cannot listen" in result.stderr, result.stderr
