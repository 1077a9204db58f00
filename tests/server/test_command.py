"""The serve and token commands from the command line: bad config exits 2 with one line, a token is minted."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from ca.cli import main as cli


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("MESHCA_") or name == "KUBERNETES_SERVICE_HOST":
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _loopback(state_dir: Path, *extra: str) -> list[str]:
    return [
        "serve", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
        "--renew-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *extra,
    ]  # fmt: skip


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if re.match(r"meshca( \w+)?: error:", line)]


def test_cli_empty_cacerts_dir_exits_2_with_one_line(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    code = cli.main(_loopback(tmp_path / "state", "--cacerts", str(cacerts)))
    out, err = capsys.readouterr()
    assert code == cli.EXIT_CONFIG == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("meshca: error: ")
    assert str(cacerts) in lines[0]
    assert "holds no CA" in lines[0]
    assert out == ""


def test_cli_partial_cacerts_names_the_missing_file(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    (cacerts / "ca-cert.pem").write_text("x")
    code = cli.main(_loopback(tmp_path / "state", "--cacerts", str(cacerts)))
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1
    assert "ca-key.pem" in lines[0]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--default-ttl", "1.5h"), "'1.5h'"),
        (("--max-ttl", "9999999999d"), "9999999999d"),
        (("--listen", "nowhere"), "'nowhere'"),
        (("--trust-domain", "Cluster.Local"), "Cluster.Local"),
        (("--ca-key-type", "ed25519"), "'ed25519'"),
        (("--grpc-workers", "0"), "--grpc-workers"),
        (("--default-ttl", "48h", "--max-ttl", "24h"), "--default-ttl"),
        (("--log-level", "verbose"), "verbose"),
    ],
)
def test_cli_bad_config_exits_2_without_a_traceback(
    extra: tuple[str, ...], words: str, tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(_loopback(tmp_path / "state", *extra))
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1
    assert words in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"), [("MESHCA_TTL_OVER_MAX", "truncate"), ("MESHCA_AUTH", "oidc")]
)
def test_cli_bad_choice_in_the_environment_exits_2(
    variable: str,
    value: str,
    tmp_path: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    cacerts = tmp_path / "cacerts"
    cacerts.mkdir()
    code = cli.main(_loopback(tmp_path / "state", "--cacerts", str(cacerts)))
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert value in err


def test_cli_usage_error_exits_2(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--auth", "magic"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_token_mints_a_token(tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["token", "--state-dir", str(tmp_path), "--namespace", "shop", "--service-account", "web"]
    )
    out = capsys.readouterr().out.strip()
    assert code == 0
    claims = jwt.decode(out, options={"verify_signature": False})
    assert claims["sub"] == "system:serviceaccount:shop:web"
    assert claims["aud"] == ["istio-ca"]
    assert claims["exp"] - claims["iat"] == 12 * 3600


def test_cli_token_bad_pod_binding_exits_2(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "token",
            "--state-dir",
            str(tmp_path),
            "--namespace",
            "a",
            "--service-account",
            "b",
            "--pod-name",
            "p",
        ]
    )
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1


def test_cli_serve_tunes_malloc_before_it_builds_the_server(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.startup_order import MALLOC_THEN_SERVER, record_malloc_and_build

    steps = record_malloc_and_build(monkeypatch)
    assert cli.main(_loopback(tmp_path / "state")) == cli.EXIT_CONFIG
    capsys.readouterr()
    assert steps == MALLOC_THEN_SERVER
