"""A command line that names its subcommand first is read by that subcommand's parser alone (so
`meshca agent` does not import the server's flags and what they import); it reads the same as
with every subcommand's parser, errors and help included."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable

import pytest

from ca.cli.main import PARSERS, build_parser, parse_command_line
from ca.common.flags import command_words
from ca.errors import ConfigError


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _outcome(read: Callable[[], argparse.Namespace]) -> tuple[object, str, str]:
    """What reading a command line gives: its values or how it stopped, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = read()
            values = {k: v for k, v in vars(args).items() if k != "_owning_parser"}
            result: object = (values, args._owning_parser.prog)
        except SystemExit as stop:
            result = ("exit", stop.code)
        except ConfigError as error:
            result = ("config error", str(error))
    return result, out.getvalue(), err.getvalue()


def test_one_named_subcommand_builds_that_parser_alone() -> None:
    assert _subcommands(build_parser({}, only="agent")) == ["agent"]
    assert _subcommands(build_parser({})) == list(PARSERS)


LINES = [
    ["agent", "--ca-addr", "127.0.0.1:1", "--once", "on", "--once-timeout", "5s"],
    ["agent"],
    ["agent", "-h"],
    ["agent", "--bogus"],
    ["agent", "--once", "maybe"],
    ["agent", "--ttl", "-3h"],
    ["agent", "--max-ttl", "-3h"],  # serve's flag: refused as negative, as the full parser does
    ["agent", "--token-file", "--max-ttl", "-3h"],
    ["token", "--namespace", "shop", "--service-account", "web"],
    ["token"],
    ["ca", "status", "--bogus"],
    ["bogus"],
    ["-h"],
    [],
]


@pytest.mark.parametrize("words", LINES, ids=[" ".join(line) or "(nothing)" for line in LINES])
def test_a_command_line_reads_as_with_every_subcommand(words: list[str]) -> None:
    def with_every_subcommand() -> argparse.Namespace:
        parser = build_parser({})
        return parser.parse_args(command_words(words, parser))

    expected = _outcome(with_every_subcommand)
    assert _outcome(lambda: parse_command_line(words, {})) == expected
