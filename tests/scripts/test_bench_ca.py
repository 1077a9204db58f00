"""scripts/bench_ca.py's pinned method keeps working: a pinned CA, pinned load, the floor, the table.

The figures are not checked (they depend on the machine); what is checked is that every
request of every setting succeeded, that the server and its load really ran on the two
cores asked for, and that the script still ends with its JSON summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the pinned method needs two CPUs")
def test_the_pinned_benchmark_issues_without_errors_and_prints_its_table(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    trace = tmp_path / "trace"
    done = subprocess.run(
        [
            *(sys.executable, str(REPO / "scripts" / "bench_ca.py"), "--quick", "--prefilled", "3000"),
            *("--duration", "1", "--server-cpu", str(cpus[0]), "--load-cpu", str(cpus[1])),
            *("--trace", str(trace)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["method"] == "pinned"
    settings = summary["settings"]
    assert list(settings) == [
        "ledger off",
        "ledger on (SQLite, default)",
        "transport only (asyncio, pre-issued)",
        "transport only (threaded, pre-issued)",
        "ledger on, 3,000 records",
    ]
    for figures in settings.values():
        assert figures["errors"] == 0
        assert figures["certs_per_s"][0] > 0 and figures["floor_per_s"][0] > 0
        assert figures["server_cpu_ms_per_cert"][0] > 0
        # The server and its ledger process shared one core: pinned, they cannot use more.
        assert 0 < figures["server_cpu_cores"][0] <= 1.05
    assert len(summary["ledger_on_over_off"]) == 1 and len(summary["prefilled_over_empty"]) == 1
    # Each run with a ledger probed the disk at its own half-load commit spacing; runs without none.
    for label, figures in settings.items():
        probes = figures["half_load_fsync_p50_p99_p999_ms"]
        if label == "ledger off" or label.startswith("transport only"):
            assert probes == []
        else:
            ((p50, p99, p999),) = probes
            assert 0 < p50 <= p99 <= p999
    # Each run's floor was measured right before it, not once per round.
    assert len({figures["floor_per_s"][0] for figures in settings.values()}) == len(settings)
    assert "| ledger off |" in done.stdout
    # --trace: each setting's half-load phase as a CSV of (start, latency), ordered by start.
    traces = sorted(trace.glob("*.csv"))
    assert len(traces) == len(settings)
    for path in traces:
        header, *rows = path.read_text().splitlines()
        assert header == "start_s,latency_ms" and rows
        starts = [float(row.split(",")[0]) for row in rows]
        assert starts == sorted(starts)
        assert all(float(row.split(",")[1]) > 0 for row in rows)
    assert done.stdout.count("slowest 1% at half load") == len(settings)


def test_a_trace_directory_that_cannot_be_made_is_refused_before_any_run(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_ca.py"), "--trace", str(not_a_directory / "trace")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"--trace {not_a_directory / 'trace'}: cannot make that directory" in done.stderr
    assert "Traceback" not in done.stderr
