"""Placeholder: replaced by the real `meshca enforce` command."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def add_enforce_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], environ: Mapping[str, str]
) -> None:
    commands.add_parser("enforce")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
