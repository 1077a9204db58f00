from __future__ import annotations

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
