"""Log lines of a starting command: held until it runs, dropped when its start fails with an error."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from ca.common import logs
from ca.errors import ConfigError

log = logging.getLogger("meshca.test")


@pytest.fixture(autouse=True)
def json_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("info")
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def messages(err: str) -> list[str]:
    return [json.loads(line)["msg"] for line in err.splitlines()]


def test_a_start_that_fails_with_an_error_writes_none_of_its_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError), logs.held_until_running():
        log.warning("invalid policy file")
        raise ConfigError("invalid policy file, fix it before starting")
    assert capsys.readouterr().err == ""
    log.info("after the command")
    assert messages(capsys.readouterr().err) == ["after the command"]


def test_lines_held_while_starting_come_out_in_order_once_running(capsys: pytest.CaptureFixture[str]) -> None:
    with logs.held_until_running():
        log.info("first")
        log.warning("second")
        assert capsys.readouterr().err == ""
        logs.running()
        assert messages(capsys.readouterr().err) == ["first", "second"]
        log.info("while running")
        assert messages(capsys.readouterr().err) == ["while running"]
        with pytest.raises(ConfigError):  # a running command's lines are already out
            raise ConfigError("late")
    assert capsys.readouterr().err == ""


def test_a_command_that_ends_without_an_error_writes_its_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with logs.held_until_running():
        log.info("done")
    assert messages(capsys.readouterr().err) == ["done"]


def test_an_unexpected_failure_keeps_the_lines_that_lead_to_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), logs.held_until_running():
        log.info("context")
        raise RuntimeError("a bug")
    assert messages(capsys.readouterr().err) == ["context"]


def test_a_start_logging_without_end_stops_holding(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "MAX_HELD", 3)
    with logs.held_until_running():
        for n in range(4):
            log.info(str(n))
        assert messages(capsys.readouterr().err) == ["0", "1", "2", "3"]
        log.info("4")
        assert messages(capsys.readouterr().err) == ["4"]


def test_grpc_core_keeps_only_its_errors_unless_told_otherwise() -> None:
    environ: dict[str, str] = {}
    logs.quiet_grpc_core(environ)
    assert environ == {"GRPC_VERBOSITY": "ERROR"}
    environ = {"GRPC_VERBOSITY": "DEBUG"}
    logs.quiet_grpc_core(environ)
    assert environ == {"GRPC_VERBOSITY": "DEBUG"}


def test_urllib3s_retry_warnings_stay_out_but_its_errors_come_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with logs.held_until_running():
        logs.running()
        pool = logging.getLogger("urllib3.connectionpool")
        pool.warning("Retrying (Retry(total=2)) after connection broken by 'NewConnectionError(...)'")
        pool.error("gave up")
    assert messages(capsys.readouterr().err) == ["gave up"]
