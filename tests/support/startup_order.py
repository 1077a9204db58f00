"""Records, in order, the malloc tuning and the server build of a `meshca serve` start path."""

from __future__ import annotations

import pytest

from ca.common import malloc_tuning
from ca.errors import ConfigError
from ca.server import wiring

MALLOC_THEN_SERVER = ["malloc tuned", "server built"]


def record_malloc_and_build(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the malloc tuning and the server build with recorders; the build then stops the
    start with a ConfigError. Returns the list the steps are appended to."""
    steps: list[str] = []

    def tune(environ: object) -> bool:
        steps.append("malloc tuned")
        return True

    def build(cfg: object, clock: object = None) -> object:
        steps.append("server built")
        raise ConfigError("stop here")

    monkeypatch.setattr(malloc_tuning, "map_large_blocks_apart", tune)
    monkeypatch.setattr(wiring, "build_server", build)
    return steps
