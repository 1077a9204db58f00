#!/usr/bin/env python3
"""Server CPU per certificate for `meshca serve --processes 1` and `--processes 2`.

Run from the project root with the project's virtualenv:

    .venv/bin/python scripts/bench_processes.py            # 3 rounds, about 2 minutes
    .venv/bin/python scripts/bench_processes.py --quick    # one short round

On a machine of two cores a speed-up would mostly measure the load generator, which needs a
core of its own; so this reports what a certificate costs the server. As in scripts/bench_ca.py's
pinned method (scripts/_bench_pinned.py): the server, with every process it starts (the
supervisor, the workers and their ledger processes), is pinned to one core before exec, the
load to the other; every request has its own token and CSR (the token cache never hits); the
ledger is on (SQLite in the state dir, shared by the workers) unless --ledger off. Each round
runs both settings, one after the other, at --in-flight requests in flight (closed loop), and
prints the rate, the server's CPU (summed over all its processes, from /proc) per certificate,
and the load average (other work on the machine shows there). The table gives the median over
rounds and the spread (min-max).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _bench_common import ServerFleet, make_pool
from _bench_pinned import (
    Phase,
    PinnedSettings,
    _specs,
    parse_pinned,
    run_phase,
    server_token_cache,
    spread,
)


@dataclass
class ProcessesFleet(ServerFleet):
    """`meshca serve --processes N`: the supervisor's pid is the one measured (with its tree)."""

    processes: int = 1

    def _meshca_args(self, ports_file: Path, token_cache_size: int) -> list[str]:
        return [*super()._meshca_args(ports_file, token_cache_size), "--processes", str(self.processes)]


@dataclass
class Setting:
    processes: int
    peaks: list[Phase] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)  # /proc/loadavg's first three figures, after each

    def cpu_ms_per_cert(self) -> list[float]:
        return [p.server_cpu / p.certs_per_s * 1e3 for p in self.peaks if p.certs_per_s]


def parse(argv: Sequence[str]) -> tuple[PinnedSettings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="bench_processes.py", description=__doc__)
    parser.add_argument("--processes", default="1,2", help="the settings to compare (default 1,2)")
    parser.add_argument("--ledger", default="auto", help="`meshca serve --ledger` (default auto: SQLite)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--clients", type=int, default=2, help="client processes on the load core")
    parser.add_argument(
        "--channels-per-client", type=int, default=8, help="connections per client (spread over workers)"
    )
    parser.add_argument("--pool", type=int, default=12_000, help="distinct tokens + CSRs")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one short round, small pool (smoke run)")
    a = parser.parse_args(argv)
    if a.quick:
        a.rounds, a.duration, a.warmup, a.pool = 1, 2.0, 0.5, 1_500
    pinned = parse_pinned(
        [
            *("--server-cpu", str(a.server_cpu), "--load-cpu", str(a.load_cpu)),
            *("--duration", str(a.duration), "--warmup", str(a.warmup), "--in-flight", str(a.in_flight)),
            *("--clients", str(a.clients), "--channels-per-client", str(a.channels_per_client)),
            *("--pool", str(a.pool), "--rounds", str(a.rounds)),
        ]
    )
    return pinned, a


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(s: PinnedSettings, a: argparse.Namespace) -> list[Setting]:
    ctx = multiprocessing.get_context("spawn")
    settings = [Setting(int(n)) for n in a.processes.split(",")]
    with tempfile.TemporaryDirectory(prefix="meshca-processes-") as tmp_name:
        tmp = Path(tmp_name)
        state_dir, logs = tmp / "state", tmp / "logs"
        state_dir.mkdir(mode=0o700)
        logs.mkdir()
        os.sched_setaffinity(0, {s.load_cpu})
        print(f"  making a pool of {s.pool} distinct tokens and CSRs ...", flush=True)
        pool = make_pool(state_dir, s.pool)
        for r in range(s.rounds):
            print(f"round {r + 1}/{s.rounds}", flush=True)
            for setting in settings:
                with ProcessesFleet(
                    state_dir,
                    logs,
                    "ec-p256",
                    ledger=a.ledger,
                    cpus=(s.server_cpu,),
                    processes=setting.processes,
                ) as fleet:
                    pid, port = fleet.start(token_cache_size=server_token_cache(len(pool)), timeout_s=120)
                    root_pem = (state_dir / "root-cert.pem").read_bytes()
                    peak = run_phase(ctx, s, pid, _specs(s, port, root_pem, pool, None))
                setting.peaks.append(peak)
                setting.loads.append(load_average())
                per_cert_ms = peak.server_cpu / max(peak.certs_per_s, 1e-9) * 1e3
                print(
                    f"  --processes {setting.processes}: {peak.certs_per_s:,.0f}/s, server "
                    f"{peak.server_cpu:.2f} cores = {per_cert_ms:.3f} ms CPU per certificate, "
                    f"clients {peak.client_cpu:.2f} cores, p50/p99 "
                    f"{peak.p50_ms:.1f}/{peak.p99_ms:.1f} ms, errors {peak.errors}; load average "
                    f"{setting.loads[-1]}",
                    flush=True,
                )
                for suffix in ("", "-wal", "-shm"):  # each run starts from an empty ledger
                    (state_dir / f"ledger.db{suffix}").unlink(missing_ok=True)
                (state_dir / "ledger-head.json").unlink(missing_ok=True)
    return settings


def report(s: PinnedSettings, a: argparse.Namespace, settings: list[Setting]) -> dict[str, Any]:
    print()
    print(
        f"Server (supervisor, workers, ledger processes) on CPU {s.server_cpu}, {s.clients} load "
        f"processes on CPU {s.load_cpu} with {s.clients * s.channels_per_client} connections; "
        f"{s.in_flight} in flight; --ledger {a.ledger}; median of {s.rounds} round(s) (min-max)"
    )
    print("| --processes | certificates/s | server CPU per certificate | load average after each run |")
    print("|---|---|---|---|")
    summary: dict[str, Any] = {}
    for st in settings:
        rates = [p.certs_per_s for p in st.peaks]
        print(
            f"| {st.processes} | {spread(rates, ',.0f')} | {spread(st.cpu_ms_per_cert(), '.3f')} ms | "
            f"{'; '.join(st.loads)} |"
        )
        summary[str(st.processes)] = {
            "certs_per_s": rates,
            "server_cpu_ms_per_cert": st.cpu_ms_per_cert(),
            "server_cpu_cores": [p.server_cpu for p in st.peaks],
            "client_cpu_cores": [p.client_cpu for p in st.peaks],
            "errors": sum(p.errors for p in st.peaks),
            "load_average": st.loads,
        }
    busy = max((p.client_cpu for st in settings for p in st.peaks), default=0.0)
    if busy > 0.9:
        print(f"WARNING: the load generator used {busy:.2f} of its core: the rates may be its limit")
    return {"method": "processes", "settings": summary}


def main(argv: Sequence[str]) -> int:
    s, a = parse(argv)
    print(json.dumps(report(s, a, run(s, a))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
