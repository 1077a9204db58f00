"""Negative values on the command line: a duration flag given one is refused with what to give
instead, and any flag's negative value reaches that flag's own check rather than argparse's
"expected one argument"."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from ca.cli.main import build_parser, main
from ca.common.flags import DURATION_FLAGS

NO_STATE = "/nonexistent/meshca-state"


def _value_flags(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, str, object]]:
    """(command, flag, default) for every flag that takes a value, in every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _value_flags(sub, f"{path} {name}".strip())
        elif action.nargs is None:
            yield from ((path, flag, action.default) for flag in action.option_strings)


VALUE_FLAGS = list(_value_flags(build_parser({})))
DURATION_FLAG_USES = [(command, flag) for command, flag, _ in VALUE_FLAGS if flag in DURATION_FLAGS]


def test_the_duration_flags_are_found_in_their_commands() -> None:
    expected = {
        ("serve", "--default-ttl"),
        ("serve", "--max-ttl"),
        ("serve", "--token-leeway"),
        ("serve", "--ledger-checkpoint-interval"),
        ("serve", "--ledger-retention"),
        ("serve", "--ledger-linger"),
        ("serve", "--crl-validity"),
        ("agent", "--ttl"),
        ("agent", "--once-timeout"),
        ("token", "--ttl"),
        ("audit report", "--max-ttl"),
    }
    assert expected <= set(DURATION_FLAG_USES)


def test_every_flag_with_a_duration_default_is_known_as_a_duration_flag() -> None:
    with_duration_defaults = {
        flag for _, flag, default in VALUE_FLAGS if re.fullmatch(r"\d+(ms|[smhd])", str(default))
    }
    assert with_duration_defaults <= DURATION_FLAGS


@pytest.mark.parametrize(("command", "flag"), DURATION_FLAG_USES)
@pytest.mark.parametrize("value", ["-3h", "-90d", "-250ms", "-3"])
@pytest.mark.parametrize("joined", [False, True], ids=["spaced", "joined"])
def test_a_negative_duration_is_a_clear_error(
    command: str, flag: str, value: str, joined: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    words = [f"{flag}={value}"] if joined else [flag, value]
    assert main([*command.split(), *words]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"meshca: error: {flag} cannot be negative, got {value}; "
        "give a duration such as 90s, 30m, 24h or 90d\n"
    )


def test_a_flag_left_without_its_value_is_still_argparses_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--max-ttl", "--default-ttl", "1h"]) == 2
    assert "argument --max-ttl: expected one argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["audit", "list", "--state-dir", NO_STATE, "--since", "-2h"], "--since '-2h' is not a time;"),
        (
            ["audit", "list", "--state-dir", NO_STATE, "--limit", "-3.5"],
            "--limit must be a whole number from 1",
        ),
        (["agent", "--rotation-ratio", "-.5x"], "--rotation-ratio must be a number such as 0.5, not '-.5x'"),
    ],
)
def test_other_flags_check_their_negative_values_themselves(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(words) == 2
    assert capsys.readouterr().err.startswith(f"meshca: error: {message}")
