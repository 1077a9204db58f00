"""Every command and subcommand answers --help: argparse formats help text with %-formatting, so a
stray '%' in one flag's help crashes the whole command's help."""

from __future__ import annotations

import argparse

import pytest

from ca.cli.main import build_parser, main


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(command_paths(sub, (*prefix, name)))
    return paths


PATHS = command_paths(build_parser({}))


def test_the_walk_finds_the_nested_commands() -> None:
    assert ("ca", "rotate") in PATHS and ("rotate", "status") in PATHS and ("serve",) in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "meshca")
def test_help_is_printed_and_exits_0(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: meshca")
