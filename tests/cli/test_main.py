"""The `meshca` command as a user runs it: a real process, real ports, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ca._proto import istio_ca_pb2, istio_ca_pb2_grpc
from tests.support.pki import ec_key, make_csr
from tests.support.ports import read_ports_file
from tests.support.validate import assert_valid_svid

MESHCA = [sys.executable, "-m", "ca.cli"]
ANY_PORT = "127.0.0.1:0"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    """`meshca serve` with no flags at all; ports moved off the defaults through the environment."""
    env = {
        **os.environ,
        "MESHCA_LISTEN": ANY_PORT,
        "MESHCA_RENEW_LISTEN": ANY_PORT,
        "MESHCA_METRICS_LISTEN": ANY_PORT,
        "MESHCA_PORTS_FILE": str(tmp_path / "ports.json"),
    }
    process = subprocess.Popen([*MESHCA, "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        ports = read_ports_file(tmp_path / "ports.json", process)
        assert set(ports) == {"grpc", "renew", "metrics"} and all(ports.values()), ports
        yield process, ports["grpc"], tmp_path
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
    for key in ("slot-1.ca-key.pem", "slot-1.root-key.pem"):
        assert oct((cwd / "meshca-state" / "ca-slots" / key).stat().st_mode & 0o777) == "0o600"
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
    assert not (cwd / "ports.json").exists()  # its ports are no longer its
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
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = _run(
            "serve",
            "--state-dir",
            str(tmp_path / "state"),
            "--listen",
            f"127.0.0.1:{port}",
            "--renew-listen",
            "off",
            "--metrics-listen",
            "off",
            cwd=tmp_path,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"meshca: error: --listen 127.0.0.1:{port}: the address is already in use by another process; "
        "stop that process or give --listen another port (port 0 picks a free one)\n"
    )


@pytest.fixture(scope="module")
def first_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """A `meshca serve` on free ports of its own: the one a second CA must not share."""
    base = tmp_path_factory.mktemp("first-ca")
    args = ["serve", "--state-dir", str(base / "state"), "--ports-file", str(base / "ports.json")]
    flags = ["--listen", ANY_PORT, "--renew-listen", ANY_PORT, "--metrics-listen", ANY_PORT]
    process = subprocess.Popen(
        [*MESHCA, *args, *flags], cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield read_ports_file(base / "ports.json", process)
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize("grpc_server", ["asyncio", "threaded"])
@pytest.mark.parametrize(
    ("flag", "name"), [("--listen", "grpc"), ("--renew-listen", "renew"), ("--metrics-listen", "metrics")]
)
def test_a_second_ca_on_a_port_of_the_first_stops_with_one_line_and_writes_nothing(
    first_ca: dict[str, int], tmp_path: Path, grpc_server: str, flag: str, name: str
) -> None:
    """Sharing the port would have the kernel split clients between two unrelated roots."""
    address = f"127.0.0.1:{first_ca[name]}"
    flags = {"--listen": ANY_PORT, "--renew-listen": ANY_PORT, "--metrics-listen": ANY_PORT, flag: address}
    state = tmp_path / "second"
    result = _run(
        "serve",
        "--state-dir",
        str(state),
        "--grpc-server",
        grpc_server,
        "--ports-file",
        str(tmp_path / "ports.json"),
        *(item for pair in flags.items() for item in pair),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"meshca: error: {flag} {address}: the address is already in use by another process; "
        f"stop that process or give {flag} another port (port 0 picks a free one)\n"
    )
    # Nothing half-written: no state dir, so no root or ledger 'created' event of its own.
    assert not state.exists() and not (tmp_path / "ports.json").exists()
