"""scripts/bench_bundle.py keeps working: a real CA in-process, a small fleet of simulated agents,
one published bundle. The figures are not checked (they depend on the machine); what is checked is
that every agent received the bundle and the CA counted each one holding the new root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENTS = 20


@pytest.mark.slow
def test_every_simulated_agent_acknowledges_the_published_bundle() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_bundle.py"), "--agents", str(AGENTS), "--runs", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "bundle"
    (run,) = summary["runs"]
    assert run["errors"] == {}
    assert (run["agents"], run["connected"], run["acked"]) == (AGENTS, AGENTS, AGENTS)
    assert 0 < run["received_p50_ms"] <= run["received_max_ms"] <= run["ack_all_ms"]
