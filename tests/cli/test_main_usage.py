"""What the command line says about itself and about flags it cannot take."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from ca.cli.main import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"meshca {version('meshca')}\n"


@pytest.mark.parametrize(
    ("command", "required"),
    [
        ("serve", []),
        ("agent", []),
        ("token", ["--namespace", "a", "--service-account", "b"]),
        ("audit list", []),
        ("policy explain", []),
        ("enforce", []),
    ],
)
def test_a_bad_flag_prints_its_subcommands_usage(
    command: str, required: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command.split(), *required, "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: meshca {command} [-h]")
    assert err.endswith(f"meshca {command}: error: unrecognized arguments: --no-such-flag\n")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--namespace", "Bad_NS!", "--service-account", "cart"], "--namespace 'Bad_NS!' is not a valid"),
        (["--namespace", "Shop", "--service-account", "cart"], "--namespace 'Shop' is not a valid"),
        (["--namespace", "shop", "--service-account", "cart_1"], "--service-account 'cart_1' is not a valid"),
        (
            ["--namespace", "shop", "--service-account", "cart", "--pod-name", "Web", "--pod-uid", "u"],
            "--pod-name 'Web' is not a valid",
        ),
    ],
)
def test_token_refuses_names_the_api_server_would(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "--state-dir", str(tmp_path / "state"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"meshca: error: {message} Kubernetes name")
    assert err.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_token_accepts_valid_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "token",
        "--state-dir",
        str(tmp_path),
        "--namespace",
        "shop-canary",
        "--service-account",
        "web.v2",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.count(".") == 2
