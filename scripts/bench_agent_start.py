#!/usr/bin/env python3
"""Benchmark `meshca agent --once on`: process start -> certificate files on disk.

Run from the project root with the project's virtualenv:

    .venv/bin/python scripts/bench_agent_start.py              # 30 timed starts, 8 with -X importtime
    .venv/bin/python scripts/bench_agent_start.py --runs 10 --importtime-runs 3

An init container runs `meshca agent --once on` and its pod waits for it, so its start is
the pod's. One `meshca serve` (subprocess, loopback, its own state directory, the server's
default ledger) issues everything. Then, one at a time, each a fresh process with a fresh dev
token (the CA's token cache never answers for it) and a fresh output directory:

  (1) `python -m ca.cli agent ... --once on`: spawn -> cert-chain.pem, key.pem and
      root-cert.pem all present (polled every 1 ms), spawn -> exit, and the child's CPU time
      (user + system, from the kernel's accounting of waited-for children: much less moved
      by other work on a shared machine than the wall time);
  (2) the same with `python -X importtime`: the time spent importing (the sum of the
      top-level imports' cumulative times, as the interpreter reports them) against that
      run's spawn -> files, and the heaviest imports;
  (3) for reference, a bare interpreter: `python -c pass` spawn -> exit.

Each is run twice: in this environment as it is (where PYTHONDONTWRITEBYTECODE is set, as in
some development shells, meshca's own modules are compiled from source at every start), and
with bytecode cached in a private PYTHONPYCACHEPREFIX, as for a package pip installed (it
compiles .pyc files), which is how the agent runs in the image (deploy/Dockerfile compiles ca/
when it builds it: at run time the image sets PYTHONDONTWRITEBYTECODE too).

It prints min / median / p90 / max and ends with one JSON line. Figures move with the load of
the machine: the load average is printed before and after. It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _bench_common
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # for ca

from _bench_common import ServerFleet, _die_with_parent, percentile

REPO = Path(__file__).resolve().parent.parent
FILES = ("cert-chain.pem", "key.pem", "root-cert.pem")
POLL_S = 0.001
WAIT_S = 60.0
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def child_env(pycache: Path | None = None) -> dict[str, str]:
    """The agent's environment: this one without meshca settings or cluster hints; with
    `pycache`, bytecode is written and read there (PYTHONPYCACHEPREFIX) whatever
    PYTHONDONTWRITEBYTECODE says."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHCA_") and k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")
    }
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


@dataclass(frozen=True)
class Stat:
    n: int
    min: float
    median: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        ordered = sorted(values)
        return cls(
            len(ordered), ordered[0], statistics.median(ordered), percentile(ordered, 0.9), ordered[-1]
        )

    def line(self, label: str, unit: str = "ms") -> str:
        return (
            f"  {label:<34} min {self.min:7.1f}  median {self.median:7.1f}  p90 {self.p90:7.1f}  "
            f"max {self.max:7.1f} {unit}  (n={self.n})"
        )

    def brief(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 1) for k in ("min", "median", "p90", "max")}


@dataclass(frozen=True)
class Start:
    to_files_ms: float
    to_exit_ms: float
    cpu_ms: float
    imports_ms: float | None  # with -X importtime only
    top_imports: dict[str, float]  # top-level module -> cumulative ms (with -X importtime only)


def files_present(out: Path) -> bool:
    return all(os.path.exists(out / name) for name in FILES)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_importtime(stderr: str) -> tuple[float, dict[str, float]]:
    """(ms spent importing, top-level module -> its cumulative ms) from `-X importtime` output."""
    total_us = 0
    top: dict[str, float] = {}
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match is None:
            continue
        _, cumulative, indent, name = match.groups()
        if indent == " ":  # one space after the bar: a top-level import
            total_us += int(cumulative)
            top[name] = top.get(name, 0.0) + int(cumulative) / 1000
    return total_us / 1000, top


def agent_start(
    base: Path,
    index: int,
    *,
    port: int,
    ca_root: Path,
    token: str,
    key_type: str,
    importtime: bool,
    pycache: Path | None,
) -> Start:
    directory = base / f"run{index}"
    directory.mkdir()
    token_file = directory / "token"
    token_file.write_text(token + "\n")
    out = directory / "out"
    args = [
        sys.executable,
        *(["-X", "importtime"] if importtime else []),
        "-m",
        "ca.cli",
        "agent",
        "--ca-addr",
        f"127.0.0.1:{port}",
        "--ca-root",
        str(ca_root),
        "--ca-server-name",
        "localhost",
        "--token-file",
        str(token_file),
        "--output-dir",
        str(out),
        "--key-type",
        key_type,
        "--sds-socket",
        "off",
        "--workload-api-socket",
        "off",
        "--health-listen",
        "off",
        "--once",
        "on",
    ]
    log = directory / "agent.log"
    cpu_before = children_cpu_s()
    with open(log, "wb") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=child_env(pycache),
            cwd=REPO,
            preexec_fn=_die_with_parent,
        )
        try:
            while not files_present(out):
                if proc.poll() is not None and not files_present(out):
                    raise RuntimeError(
                        f"the agent exited with {proc.returncode} without its files:\n"
                        f"{log.read_text(errors='replace')[-2000:]}"
                    )
                if time.perf_counter() - t0 > WAIT_S:
                    raise TimeoutError(f"no files in {out} after {WAIT_S:.0f}s")
                time.sleep(POLL_S)
            t_files = time.perf_counter()
            code = proc.wait(timeout=WAIT_S)
            t_exit = time.perf_counter()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    cpu_ms = (children_cpu_s() - cpu_before) * 1000
    if code != 0:
        raise RuntimeError(f"the agent exited with {code}:\n{log.read_text(errors='replace')[-2000:]}")
    imports_ms: float | None = None
    top: dict[str, float] = {}
    if importtime:
        imports_ms, top = parse_importtime(log.read_text(errors="replace"))
    shutil.rmtree(directory, ignore_errors=True)
    return Start((t_files - t0) * 1000, (t_exit - t0) * 1000, cpu_ms, imports_ms, top)


def bare_interpreter_ms(pycache: Path | None) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=child_env(pycache), cwd=REPO)
    return (time.perf_counter() - t0) * 1000


@dataclass(frozen=True)
class Series:
    """One way of running the agent: `pycache` None for this environment as it is."""

    label: str
    pycache: Path | None
    timed: list[Start]
    traced: list[Start]
    bare: list[float]

    def report(self, top: int) -> dict[str, Any]:
        to_files = Stat.of([s.to_files_ms for s in self.timed])
        to_exit = Stat.of([s.to_exit_ms for s in self.timed])
        cpu = Stat.of([s.cpu_ms for s in self.timed])
        imports = Stat.of([s.imports_ms or 0.0 for s in self.traced])
        traced_files = Stat.of([s.to_files_ms for s in self.traced])
        shares = Stat.of([100 * (s.imports_ms or 0.0) / s.to_files_ms for s in self.traced])
        bare = Stat.of(self.bare)
        by_module: dict[str, list[float]] = {}
        for start in self.traced:
            for name, ms in start.top_imports.items():
                by_module.setdefault(name, []).append(ms)
        heaviest = sorted(((statistics.median(v), k) for k, v in by_module.items()), reverse=True)[:top]
        print(f"== {self.label}")
        print(to_files.line("spawn -> files on disk"))
        print(to_exit.line("spawn -> exit"))
        print(cpu.line("CPU time of the agent (user+sys)"))
        print(traced_files.line("-X importtime: spawn -> files"))
        print(imports.line("-X importtime: time in imports"))
        print(shares.line("-X importtime: import share", unit="%"))
        print(bare.line("bare interpreter: python -c pass"))
        print("   heaviest top-level imports (median cumulative ms):")
        for ms, name in heaviest:
            print(f"     {ms:7.1f}  {name}")
        return {
            "to_files_ms": to_files.brief(),
            "to_exit_ms": to_exit.brief(),
            "cpu_ms": cpu.brief(),
            "importtime_to_files_ms": traced_files.brief(),
            "imports_ms": imports.brief(),
            "import_share_pct": shares.brief(),
            "bare_interpreter_ms": bare.brief(),
            "heaviest_imports_ms": {name: round(ms, 1) for ms, name in heaviest},
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="timed starts (default 30)")
    parser.add_argument(
        "--importtime-runs", type=int, default=8, help="starts with -X importtime (default 8)"
    )
    parser.add_argument("--key-type", default="ec-p256", choices=["ec-p256", "ec-p384", "rsa-2048"])
    parser.add_argument("--top", type=int, default=12, help="heaviest top-level imports to list (default 12)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.importtime_runs < 1:
        parser.error("--runs and --importtime-runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from ca.common.clock import SystemClock
    from ca.server.devtoken import DevTokenIssuer

    settings = parse_args(argv)
    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="mas-", dir="/tmp"))
    series: list[Series] = []
    try:
        state = base / "state"
        state.mkdir(mode=0o700)
        with ServerFleet(state, base, "ec-p256", ledger="auto") as fleet:
            _, port = fleet.start(token_cache_size=10_000)
            dev = DevTokenIssuer.load_or_create(state, SystemClock())
            counter = iter(range(1_000_000))

            def start(importtime: bool, pycache: Path | None) -> Start:
                index = next(counter)
                return agent_start(
                    base,
                    index,
                    port=port,
                    ca_root=state / "root-cert.pem",
                    token=dev.mint(namespace="bench", service_account=f"init-{index}"),
                    key_type=settings.key_type,
                    importtime=importtime,
                    pycache=pycache,
                )

            ways = [
                ("this environment as it is" + bytecode_note(), None),
                ("bytecode cached (as a package installed by pip: .pyc compiled)", base / "pyc"),
            ]
            for label, pycache in ways:
                start(False, pycache)  # warm the page cache, the CA and any bytecode; not counted
                timed = [start(False, pycache) for _ in range(settings.runs)]
                traced = [start(True, pycache) for _ in range(settings.importtime_runs)]
                bare = [bare_interpreter_ms(pycache) for _ in range(max(5, settings.runs // 3))]
                series.append(Series(label, pycache, timed, traced, bare))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"meshca agent --once on, {settings.key_type} workload key, against one local meshca serve")
    print(
        f"  {os.cpu_count()} CPUs; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        "(a shared machine moves the wall times; CPU time moves less)"
    )
    result: dict[str, Any] = {
        "bench": "agent_start",
        "key_type": settings.key_type,
        "runs": settings.runs,
        "importtime_runs": settings.importtime_runs,
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
    }
    for one, key in zip(series, ("as_is", "bytecode_cached"), strict=True):
        result[key] = one.report(settings.top)
    print(json.dumps(result))
    return 0


def bytecode_note() -> str:
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return " (PYTHONDONTWRITEBYTECODE is set: meshca's own modules are compiled at every start)"
    return ""


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
