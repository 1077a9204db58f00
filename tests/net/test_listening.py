"""Ports: one in use stops a process with one line naming the setting; port 0 and the ports file."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca.agent.runner import build_agent
from ca.cli.main import build_parser
from ca.errors import ConfigError
from ca.net.listening import check_free, listen_error
from ca.server.settings import serve_config
from ca.server.wiring import build_server
from tests.support.agent import agent_args, parse_agent_config, run_agent_cli, start_agent
from tests.support.ca_server import serve_args, start_ca
from tests.support.ports import reserved_port


def in_use_message(flag: str, address: str) -> str:
    return (
        f"{flag} {address}: the address is already in use by another process; stop that process or "
        f"give {flag} another port (port 0 picks a free one)"
    )


@pytest.fixture
def busy() -> Iterator[str]:
    """An address another socket listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# --------------------------------------------------------------------------- the check before any write


def test_check_free_refuses_an_address_another_socket_listens_on(busy: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_free("--listen", busy)
    assert str(refused.value) == in_use_message("--listen", busy)


def test_check_free_lets_through_port_0_and_a_port_held_only_by_a_socket_that_does_not_listen() -> None:
    check_free("--listen", "127.0.0.1:0")
    with reserved_port() as port:
        check_free("--listen", f"127.0.0.1:{port}")


def test_a_privileged_port_says_so() -> None:
    err = PermissionError(13, "Permission denied")
    assert "ports below 1024 need privileges" in str(listen_error("--listen", "0.0.0.0:443", err))


# --------------------------------------------------------------------------- meshca serve, past the check


@pytest.mark.parametrize("grpc_server", ["asyncio", "threaded"])
def test_the_grpc_bind_itself_refuses_the_port_of_another_ca(tmp_path: Path, grpc_server: str) -> None:
    """gRPC's own default, SO_REUSEPORT, would let both CAs listen and split their clients."""
    first = start_ca(tmp_path / "first", "--grpc-server", grpc_server)
    try:
        args = build_parser({}).parse_args(serve_args(tmp_path / "second", "--grpc-server", grpc_server))
        second = build_server(serve_config(args, {}))
        address = f"127.0.0.1:{first.port}"
        second.cfg = dataclasses.replace(second.cfg, listen=address)  # as if taken after the check
        with pytest.raises(ConfigError) as refused:
            second.start()
        assert str(refused.value).startswith(f"--listen {address}: cannot listen there; the port is in use")
        assert first.request(token=first.token())[0]
    finally:
        first.stop()


def test_a_metrics_port_taken_after_the_check_is_one_line_not_an_oserror(tmp_path: Path, busy: str) -> None:
    args = build_parser({}).parse_args(serve_args(tmp_path / "state"))
    server = build_server(serve_config(args, {}))
    server.cfg = dataclasses.replace(server.cfg, metrics_listen=busy)
    with pytest.raises(ConfigError) as refused:
        server.start()
    assert str(refused.value) == in_use_message("--metrics-listen", busy)


def test_serve_reports_its_bound_ports_in_the_ports_file_and_removes_it_at_stop(tmp_path: Path) -> None:
    ports_file = tmp_path / "run" / "ports.json"
    ca = start_ca(tmp_path / "state", "--ports-file", str(ports_file))
    try:
        written = json.loads(ports_file.read_text())
        assert written == ca.server.ports and set(written) == {"grpc", "renew", "metrics"}
        assert 0 not in written.values()
    finally:
        ca.stop()
    assert not ports_file.exists()


def test_a_stale_ports_file_is_removed_before_a_start_that_fails(tmp_path: Path, busy: str) -> None:
    ports_file = tmp_path / "ports.json"
    ports_file.write_text('{"grpc": 1}\n')
    args = build_parser({}).parse_args(serve_args(tmp_path / "state", "--ports-file", str(ports_file)))
    server = build_server(serve_config(args, {}))
    server.cfg = dataclasses.replace(server.cfg, metrics_listen=busy)
    with pytest.raises(ConfigError):
        server.start()
    assert not ports_file.exists()


# --------------------------------------------------------------------------- meshca agent


def _agent_args(tmp_path: Path, health: str, *extra: str) -> list[str]:
    args = agent_args(
        ca_port=1,
        ca_root=tmp_path / "root-cert.pem",
        token_file=tmp_path / "token",
        output_dir=tmp_path / "certs",
        sds_socket=tmp_path / "sds.sock",
        extra=extra,
    )
    args[args.index("--health-listen") + 1] = health
    return args


def test_an_agent_whose_health_port_is_in_use_stops_before_it_touches_its_sockets(
    tmp_path: Path, busy: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        build_agent(parse_agent_config(_agent_args(tmp_path, busy)))
    assert str(refused.value) == in_use_message("--health-listen", busy)
    assert not (tmp_path / "sds.sock").exists()


def test_meshca_agent_with_its_health_port_in_use_exits_2_with_one_line(tmp_path: Path, busy: str) -> None:
    result = run_agent_cli(_agent_args(tmp_path, busy), timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"meshca: error: {in_use_message('--health-listen', busy)}\n"


def test_the_agent_reports_its_health_port_in_the_ports_file(tmp_path: Path) -> None:
    ports_file = tmp_path / "ports.json"
    agent = start_agent(_agent_args(tmp_path, "127.0.0.1:0", "--ports-file", str(ports_file)))
    try:
        assert json.loads(ports_file.read_text()) == {"health": agent.health_port}
        assert agent.health_port != 0
    finally:
        agent.stop()
    assert not ports_file.exists()
