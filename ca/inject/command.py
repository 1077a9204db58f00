"""`meshca inject -f FILE|DIR|-`: manifests in, the same manifests with meshca's sidecars out.

The edge of ca.inject: it reads files, a directory's *.yaml/*.yml/*.json files (in name order,
not recursing, as `kubectl apply -f DIR` does) or stdin, and writes every document as
multi-document YAML to stdout in the order read. Comments do not survive; empty documents are
dropped. Nothing is written unless every input was read and injected: a bad file leaves no
half output. Warnings go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from ca.errors import ConfigError
from ca.inject.manifest import inject_manifest
from ca.inject.settings import InjectSettings, inject_settings

SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


def source_files(name: str) -> list[Path]:
    """The files `-f name` stands for."""
    path = Path(name)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise ConfigError(
                f"-f {name}: the directory holds no {', '.join('*' + s for s in SUFFIXES)} files; "
                "name a manifest file, a directory of manifests, or - for stdin"
            )
        return files
    return [path]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"-f {path}: no such file or directory; name a manifest file, a directory, or - for stdin"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"-f {path}: cannot be read ({err}); give a readable UTF-8 manifest file") from err


def parse_documents(text: str, origin: str) -> list[Any]:
    """The YAML (or JSON) documents of one input, empty ones dropped."""
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{origin}: not valid YAML{where} ({problem}); fix the file (kubectl apply --dry-run=client "
            "-f shows the same problem)"
        ) from err


def inject_documents(
    documents: list[Any], settings: InjectSettings, origin: str
) -> tuple[list[Any], list[str]]:
    injected: list[Any] = []
    warnings: list[str] = []
    for document in documents:
        try:
            result = inject_manifest(document, settings)
        except ConfigError as err:
            raise ConfigError(f"{origin}: {err.message}", reason=err.reason) from err
        injected.append(result.obj)
        warnings += [f"{origin}: {w}" for w in result.warnings]
    return injected, warnings


def run(
    args: argparse.Namespace,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    settings = inject_settings(args)
    output: list[Any] = []
    warnings: list[str] = []
    for name in args.filename:
        if name == STDIN:
            inputs = [("stdin", stdin.read())]
        else:
            inputs = [(str(path), _read(path)) for path in source_files(name)]
        for origin, text in inputs:
            documents, notes = inject_documents(parse_documents(text, origin), settings, origin)
            output += documents
            warnings += notes
    for warning in warnings:
        print(f"meshca inject: warning: {warning}", file=stderr)
    if output:
        yaml.safe_dump_all(output, stdout, sort_keys=False, default_flow_style=False)
    return 0
