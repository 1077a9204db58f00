#!/usr/bin/env python3
"""Benchmark a new root reaching the agents: from `meshca ca rotate --prepare --new-root` to every
connected agent acknowledging it, and to the new slot signing.

Run from the project root with the project's virtualenv (needs 2 CPUs):

    .venv/bin/python scripts/bench_bundle.py                      # 1,000 agents, 3 runs
    .venv/bin/python scripts/bench_bundle.py --agents 20 --runs 1   # smoke run, a few seconds

Each run starts a fresh CA in a process of its own, pinned to CPU 0: the real `meshca serve`
server (ca.server.wiring.build_server, from the flags `meshca serve` parses, with its SQLite
ledger and its renewal port where the control stream is served), built in-process so that this
script can call its push coordinator. The simulated agents are scripts/bench_rotate.py's (one
real control stream each, its own key and certificate, a few thousand per load process on one
asyncio loop, on CPU 1), which here also follow the bundle protocol as `meshca agent` does:
on a TrustBundle they answer BundleHeld with the SHA-256 of each root. They do not write files
or serve SDS; what is measured is the CA's push and the stream round trip.

A run: the CA starts (with `--ca-root-publish 0s`); the agents get certificates and open their
streams; once the CA counts them all connected, the CA's process makes the transition that
`meshca ca rotate --prepare --new-root` asks for (CaKeys.request: a new root and signing CA,
stored, recorded in the ledger, the new CRLs then the new bundle pushed), then reads
`bundle_holders(new root)` every 2 ms until every connected agent holds it, then waits for the
schedule (a turn a second) to activate the slot. Printed: the time from the prepare to the last
acknowledgement as the CA counts it and to activation, and when the agents received the bundle
(first, p50, p99, max after the prepare). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing
import os
import queue as queue_module
import resource
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for bench_rotate and _bench_common
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # for ca, if not installed

from _bench_common import percentile
from bench_rotate import (
    AGENTS_PER_PROC,
    CA_CPU,
    LOAD_CPU,
    Fleet,
    LoadSpec,
    OpenStream,
    SimAgent,
    _split,
    _wait_event,
    _wait_flag,
    make_agents,
    raise_open_files,
    workspace,
)

POLL_S = 0.002  # how often the CA's process reads bundle_holders while waiting
ACK_TIMEOUT_S = 120.0


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the CA process


def _serve(state_dir: str, log_file: str, commands: Any, answers: Any) -> None:
    """The CA's process: `meshca serve`'s server in-process, driven by (command, ...) tuples."""
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {CA_CPU})
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(filename=log_file, level=logging.WARNING)

    from cryptography import x509

    from ca.agent.bundle import root_sha256
    from ca.cli.main import build_parser
    from ca.server.settings import serve_config
    from ca.server.wiring import build_server

    flags = ["serve", "--state-dir", state_dir, "--listen", "127.0.0.1:0", "--renew-listen", "127.0.0.1:0"]
    flags += ["--metrics-listen", "off", "--ledger", "auto", "--grpc-server", "asyncio"]
    flags += ["--ca-root-publish", "0s"]  # activation as soon as every agent holds the root
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHCA_")}
    environ.pop("KUBERNETES_SERVICE_HOST", None)
    environ.pop("KUBECONFIG", None)
    server = build_server(serve_config(build_parser(environ).parse_args(flags), environ))
    server.start()
    push = server.push
    try:
        if push is None:
            answers.put(("error", "the CA has no push coordinator (no ledger)"))
            return
        answers.put(("ports", dict(server.ports)))
        while True:
            command = commands.get()
            if command[0] == "stop":
                return
            if command[0] == "connected":
                current = x509.load_pem_x509_certificates((Path(state_dir) / "root-cert.pem").read_bytes())
                answers.put(("connected", push.bundle_holders(root_sha256(current[0])).connected))
            elif command[0] == "publish":
                # What `meshca ca rotate --prepare --new-root` makes the CA do: a new slot with a
                # new root, stored and recorded, its bundle pushed after the new CRLs.
                expected = int(command[1])
                keys = server.keys
                assert keys is not None
                started = time.time()
                outcome = keys.request("prepare", new_root=True, requested_by="bench")
                called = time.time()
                sha = outcome.transitions[0].root_fingerprints[0]
                deadline = time.monotonic() + ACK_TIMEOUT_S
                ack = push.bundle_holders(sha)
                while ack.holding < expected and time.monotonic() < deadline:
                    time.sleep(POLL_S)
                    ack = push.bundle_holders(sha)
                acked = time.time()
                slot = outcome.transitions[0].slot_id
                while keys.keyring.active.id != slot and time.monotonic() < deadline:
                    time.sleep(POLL_S)  # the schedule's next turn (once a second) activates it
                answers.put(("acked", started, called, acked, ack.holding, ack.connected, time.time()))
    finally:
        server.stop()


# --------------------------------------------------------------------------- the agents


class BundleFleet(Fleet):
    """bench_rotate's agents, answering a TrustBundle with BundleHeld as `meshca agent` does."""

    def __init__(self, spec: LoadSpec, agents: list[SimAgent]) -> None:
        super().__init__(spec, agents)
        self.bundle_at: dict[int, float] = {}  # agent index -> when its first TrustBundle came
        self.all_bundled = asyncio.Event()

    def _handle(self, agent: SimAgent, stream: OpenStream, message: Any) -> None:
        if message.WhichOneof("kind") != "bundle":
            super()._handle(agent, stream, message)
            return
        import hashlib

        from ca._proto import meshca_control_pb2 as pb

        self.bundle_at.setdefault(agent.index, time.time())
        held = pb.AgentMessage(
            bundle_held=pb.BundleHeld(
                bundle_sha256=[hashlib.sha256(der).hexdigest() for der in message.bundle.root_der],
                sequence=message.bundle.sequence,
            )
        )
        asyncio.get_running_loop().create_task(self._write(stream.call, held.SerializeToString()))
        if len(self.bundle_at) == self.report.issued:
            self.all_bundled.set()

    async def _write(self, call: Any, raw: bytes) -> None:
        try:
            await call.write(raw)
        except (self.grpc.aio.AioRpcError, asyncio.InvalidStateError) as err:
            self.error("BundleHeld not sent", repr(err))


async def _load(spec: LoadSpec, reports: Any, connect: Any, stop: Any) -> None:
    agents = make_agents(spec)
    fleet = BundleFleet(spec, agents)
    await fleet.issue_first()
    reports.put(("issued", spec.index, fleet.report.issued, dict(fleet.report.errors)))
    tasks: list[asyncio.Task[None]] = []
    try:
        if not await _wait_flag(connect, stop, 3600):
            return
        fleet.phase = "connect"
        tasks = [asyncio.get_running_loop().create_task(fleet.live(a)) for a in agents if a.serial]
        await _wait_event(fleet.all_connected, stop, 3600)
        reports.put(("connected", spec.index, fleet.report.connected, dict(fleet.report.errors)))
        fleet.phase = "bundle"
        await _wait_event(fleet.all_bundled, stop, 3600)
        while not stop.is_set():
            await asyncio.sleep(0.05)
    finally:
        await fleet.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    reports.put(("result", spec.index, list(fleet.bundle_at.values()), dict(fleet.report.errors)))


def load_process(spec: LoadSpec, reports: Any, connect: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_open_files(spec.count + 256)
    try:
        asyncio.run(_load(spec, reports, connect, stop))
    except BaseException as err:
        reports.put(("error", spec.index, f"{type(err).__name__}: {err}", {}))


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    agents: int
    run: int
    connected: int = 0
    acked: int = 0
    ack_all_s: float = math.nan  # prepare called -> the CA counts every agent holding the new root
    call_s: float = math.nan  # how long the prepare itself took (new keys, stored, recorded)
    active_s: float = math.nan  # prepare -> the new slot active (the schedule's next turn)
    received: list[float] = field(default_factory=list)  # per agent: seconds from the call
    errors: dict[str, int] = field(default_factory=dict)


def _collect(reports: Any, kind: str, procs: int, timeout_s: float) -> list[tuple[Any, ...]]:
    got: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < procs and time.monotonic() < deadline:
        try:
            what, index, payload, errors = reports.get(timeout=0.5)
        except queue_module.Empty:
            continue
        if what == "error":
            raise RuntimeError(f"load process {index} failed: {payload}")
        if what == kind:
            got.append((payload, errors))
    if len(got) < procs:
        raise RuntimeError(f"only {len(got)} of {procs} load processes reported {kind!r}")
    return got


def _answer(answers: Any, kind: str, timeout_s: float) -> tuple[Any, ...]:
    what, *rest = answers.get(timeout=timeout_s)
    if what == "error":
        raise RuntimeError(rest[0])
    assert what == kind, (what, kind)
    return tuple(rest)


def one_run(agents: int, run: int, procs: int, work: Path) -> RunResult:
    result = RunResult(agents=agents, run=run)
    ctx = multiprocessing.get_context("spawn")
    commands, answers, reports = ctx.Queue(), ctx.Queue(), ctx.Queue()
    connect, stop = ctx.Event(), ctx.Event()
    state_dir = work / "state"
    state_dir.mkdir(mode=0o700)
    # Not a daemon: the CA starts a ledger process of its own. Stopped in `finally`.
    ca = ctx.Process(target=_serve, args=(str(state_dir), str(work / "ca.log"), commands, answers))
    loads: list[Any] = []
    try:
        ca.start()
        (ports,) = _answer(answers, "ports", 120)
        root_pem = (state_dir / "root-cert.pem").read_bytes()
        first = 0
        for index, count in enumerate(_split(agents, procs)):
            spec = LoadSpec(index, first, count, str(state_dir), ports["grpc"], ports["renew"], root_pem)
            first += count
            proc = ctx.Process(target=load_process, args=(spec, reports, connect, stop), daemon=True)
            proc.start()
            loads.append(proc)
        progress(f"run {run}: {agents} agents getting certificates")
        _collect(reports, "issued", procs, 120 + agents / 20)
        progress(f"run {run}: opening {agents} control streams")
        connect.set()
        result.connected = sum(p for p, _ in _collect(reports, "connected", procs, 120 + agents / 20))
        deadline = time.monotonic() + 60
        while True:  # the CA registers a stream before its first message: this holds at once
            commands.put(("connected",))
            (counted,) = _answer(answers, "connected", 30)
            if counted >= result.connected or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        progress(f"run {run}: the CA counts {counted} streams; publishing a bundle with a new root")
        commands.put(("publish", result.connected))
        started, called, done, holding, connected, active = _answer(answers, "acked", ACK_TIMEOUT_S + 30)
        result.acked, result.call_s, result.ack_all_s = holding, called - started, done - started
        result.active_s = active - started
        stop.set()
        for payload, errors in _collect(reports, "result", procs, 60):
            result.received += [t - started for t in payload]
            for kind, count in errors.items():
                result.errors[kind] = result.errors.get(kind, 0) + count
        if connected != result.connected:
            result.errors["CA counted another number of open streams"] = connected
    finally:
        stop.set()
        commands.put(("stop",))
        for proc in loads:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
        ca.join(timeout=30)
        if ca.is_alive():
            ca.kill()
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def print_run(r: RunResult) -> None:
    got = sorted(r.received)
    print(
        f"run {r.run}: {r.agents} agents, {r.connected} connected; every one acknowledged the new "
        f"root {_ms(r.ack_all_s)} after the prepare ({r.acked}/{r.connected} holding; the prepare "
        f"itself {_ms(r.call_s)}); the new slot active {_ms(r.active_s)} after the prepare"
    )
    if got:
        print(
            f"  bundle received: first {_ms(got[0])}, p50 {_ms(percentile(got, 0.5))}, "
            f"p99 {_ms(percentile(got, 0.99))}, max {_ms(got[-1])} ({len(got)} agents)"
        )
    if r.errors:
        print(f"  errors: {r.errors}")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--load-procs", type=int, default=0, help="0: one per 2,500 agents")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    pinned = (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {LOAD_CPU})
    raise_open_files(args.agents + 1024)
    procs = args.load_procs or max(1, math.ceil(args.agents / AGENTS_PER_PROC))
    print(
        f"meshca trust-bundle benchmark: {cores} cores, "
        + ("CA on CPU 0, agents on CPU 1" if pinned else "NOT pinned (one CPU)")
        + f"; {procs} load process(es)",
        flush=True,
    )
    results = []
    for run in range(1, args.runs + 1):
        with workspace(args.keep) as work:
            result = one_run(args.agents, run, procs, work)
        print_run(result)
        results.append(result)
    figures = [r.ack_all_s for r in results]
    if len(results) > 1:
        print(
            f"median over {len(results)} runs: {_ms(statistics.median(figures))} "
            f"(runs: {', '.join(_ms(f) for f in figures)})"
        )
    print(
        json.dumps(
            {
                "bench": "bundle",
                "cores": cores,
                "runs": [
                    {
                        "agents": r.agents,
                        "connected": r.connected,
                        "acked": r.acked,
                        "ack_all_ms": round(r.ack_all_s * 1000, 1),
                        "prepare_ms": round(r.call_s * 1000, 1),
                        "active_ms": round(r.active_s * 1000, 1),
                        "received_p50_ms": round(percentile(sorted(r.received), 0.5) * 1000, 1)
                        if r.received
                        else None,
                        "received_max_ms": round(max(r.received) * 1000, 1) if r.received else None,
                        "errors": r.errors,
                    }
                    for r in results
                ],
            },
            separators=(",", ":"),
        )
    )
    return 0 if all(r.acked == r.connected == r.agents for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
