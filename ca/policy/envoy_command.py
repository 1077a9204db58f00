"""Placeholder: replaced by the real `meshca policy` subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def add_parser(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], environ: Mapping[str, str]
) -> None:
    actions.add_parser("envoy-config")


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
