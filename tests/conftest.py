from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ca_server import RunningCa, start_ca


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[RunningCa]:
    """A CA on its embedded defaults (self-signed root, dev token issuer) on loopback."""
    running = start_ca(tmp_path / "state")
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A command run in-process configures the root logger (its level and handlers); put it back,
    so that a later test's caplog sees what it logs whatever ran before it."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers
