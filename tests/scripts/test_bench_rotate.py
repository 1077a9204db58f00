"""scripts/bench_rotate.py keeps working: a real CA, a small fleet of simulated agents, one order.

The benchmark's figures are not checked (they depend on the machine); what is checked is that
every simulated agent followed the order over its control stream, that the CA's ledger saw each
replacement, and that the script still ends with its JSON summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENTS = 20


def run_benchmark(*flags: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_rotate.py"), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


@pytest.mark.slow
def test_every_simulated_agent_replaces_its_certificate_and_the_ledger_records_it() -> None:
    summary = run_benchmark("--agents", str(AGENTS), "--settle", "0.2", "--timeout", "20")

    assert summary["bench"] == "rotate"
    (run,) = summary["runs"]
    assert run["errors"] == {}
    assert run["ca_warnings"] == {}
    assert (run["issued"], run["connected"], run["matched"]) == (AGENTS, AGENTS, AGENTS)
    assert (run["ordered"], run["replaced"], run["reconnected"]) == (AGENTS, AGENTS, AGENTS)
    assert run["ledger_replaced"] == AGENTS
    assert run["streams_idle"] == AGENTS
    assert run["streams_after"] == AGENTS
    cert = run["to_cert_s"]
    assert 0 < cert["first"] <= cert["p50"] <= cert["max"]
    assert run["to_order_s"]["max"] <= cert["max"] <= run["to_reconnect_s"]["max"]
    assert run["per_stream_kib"]["rss_kib"] > 0
