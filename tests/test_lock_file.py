"""requirements.lock holds package pins and hashes only, so it installs the same anywhere."""

from __future__ import annotations

import re
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+ \\")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}( \\)?")


def _statements() -> list[str]:
    lines = LOCK.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_every_line_is_a_pin_or_a_hash() -> None:
    strays = [line for line in _statements() if not (PIN.fullmatch(line) or HASH.fullmatch(line))]
    assert strays == [], "requirements.lock must name no index, find-links or local path"


def test_every_pin_carries_a_hash() -> None:
    statements = _statements()
    for index, line in enumerate(statements):
        if PIN.fullmatch(line):
            assert HASH.fullmatch(statements[index + 1]), f"{line} has no hash"
