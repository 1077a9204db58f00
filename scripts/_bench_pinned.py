"""The pinned measurement of scripts/bench_ca.py (its default method).

One `meshca serve` on its defaults is pinned to one core, with the affinity set before
exec so that the ledger process and every other child share that core; the load
generator runs on the other core. Every request carries its own token and its own CSR:
the pool is larger than the server's token cache and is sent in stripes, so no token
comes back before the whole pool has gone by and the cache never hits (a start-up storm).

The floor is the work no implementation can skip, done in one process on the server's
core: verify the token's RS256 signature with `cryptography` and read its claims, load
the CSR and verify its signature, build and sign the leaf with the CA's key. The ratio
is end to end / floor: the share of a core's cryptographic capacity that a core running
meshca delivers as certificates. The floor is measured again right before each run, so
that each ratio compares two measurements a few seconds apart on a core whose speed may
drift (a virtual machine's neighbours).

Each round runs the server with `--ledger off` and with the default ledger (SQLite in
the state dir), each at 32 requests in flight (closed loop) and then at half of that
peak (open loop on a fixed timetable, latency counted from the scheduled send time).
The table gives the median over rounds and the spread (min-max). After each run with a
ledger, the disk's fsync is probed at that run's half-load commit spacing: a certificate
waits for its record's commit, so the disk's tail at that spacing is in the half-load p99.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _bench_common import (
    ClientResult,
    LoadSpec,
    RequestPool,
    ServerFleet,
    client_process,
    collect,
    descendants,
    make_pool,
    percentile,
    process_cpu_seconds,
    sleep_until,
    split_evenly,
    write_pool_file,
)

LEDGER_SETTINGS = (("ledger off", "off"), ("ledger on (SQLite, default)", "auto"))
SERVER_TOKEN_CACHE = 10_000  # `meshca serve`'s default --token-cache-size
HALF_LOAD_FSYNCS = 500  # fsyncs probed after each ledger run, spaced as its half-load commits


@dataclass(frozen=True)
class PinnedSettings:
    server_cpu: int
    load_cpu: int
    rounds: int
    duration_s: float
    warmup_s: float
    in_flight: int
    clients: int
    channels_per_client: int
    pool: int
    floor_s: float
    profile_s: float  # perf and py-spy sampling of a server at the peak, each this long; 0 = none
    profile_dir: Path | None
    profile_ledgers: tuple[str, ...]
    grpc_server: str | None
    ledgers: tuple[str, ...]  # which of LEDGER_SETTINGS to run ("off", "auto")
    transports: tuple[str, ...]  # gRPC server models whose transport floor to measure
    baseline: Path | None  # a source tree whose `ca` runs as extra settings, interleaved
    prefilled: int  # also run the ledger-on server on a ledger already holding this many records
    trace_dir: Path | None = None  # where to write each half-load phase's per-request timeline


def parse_pinned(argv: Sequence[str]) -> PinnedSettings:
    parser = argparse.ArgumentParser(prog="bench_ca.py --method pinned", description=__doc__)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--clients", type=int, default=2, help="client processes on the load core")
    parser.add_argument("--channels-per-client", type=int, default=4)
    parser.add_argument(
        "--pool", type=int, default=SERVER_TOKEN_CACHE + 2_000, help="distinct tokens + CSRs (> cache)"
    )
    parser.add_argument("--floor-seconds", type=float, default=6.0)
    parser.add_argument(
        "--profile", type=float, default=0.0, help="after the rounds, profile a server N s (perf, py-spy)"
    )
    parser.add_argument("--profile-dir", type=Path, default=None, help="keep the profiles here")
    parser.add_argument(
        "--profile-ledger", action="append", choices=["off", "auto"], help="ledger setting(s) to profile"
    )
    parser.add_argument("--grpc-server", choices=["asyncio", "threaded"], default=None)
    parser.add_argument(
        "--ledgers", default="off,auto", help="ledger settings to run: off, auto or both (default)"
    )
    parser.add_argument(
        "--transports",
        default="asyncio,threaded",
        help="also serve pre-issued responses on these gRPC server models (the transport floor; '' for none)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also run each ledger setting on the `ca` package in this directory, interleaved in the "
        "same rounds (make it with: git archive REV ca | tar -x -C DIR)",
    )
    parser.add_argument(
        "--prefilled",
        type=int,
        default=1_000_000,
        help="records in the ledger of a third setting (ledger on, not empty); 0 leaves it out",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="write each half-load phase's requests (start on CLOCK_MONOTONIC, latency) as CSV here, "
        "and print how its slowest 1%% cluster in time",
    )
    parser.add_argument("--quick", action="store_true", help="one short round, small pool (smoke run)")
    a = parser.parse_args(argv)
    if a.quick:
        a.rounds, a.duration, a.warmup, a.pool, a.floor_seconds = 1, 2.0, 0.5, 1_500, 1.5
        a.prefilled = min(a.prefilled, 20_000)
    cpus = os.sched_getaffinity(0)
    for cpu in (a.server_cpu, a.load_cpu):
        if cpu not in cpus:
            parser.error(f"CPU {cpu} is not available to this process (have {sorted(cpus)})")
    if a.server_cpu == a.load_cpu:
        parser.error("--server-cpu and --load-cpu must differ")
    if a.trace is not None:
        try:  # now, not after the first setting has run for a minute
            a.trace.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(
                f"--trace {a.trace}: cannot make that directory ({err.strerror}); give a writable one"
            )
    return PinnedSettings(
        server_cpu=a.server_cpu,
        load_cpu=a.load_cpu,
        rounds=a.rounds,
        duration_s=a.duration,
        warmup_s=a.warmup,
        in_flight=a.in_flight,
        clients=a.clients,
        channels_per_client=a.channels_per_client,
        pool=a.pool,
        floor_s=a.floor_seconds,
        profile_s=a.profile,
        profile_dir=a.profile_dir,
        profile_ledgers=tuple(a.profile_ledger or ["auto"]),
        grpc_server=a.grpc_server,
        ledgers=tuple(a.ledgers.split(",")),
        transports=tuple(t for t in a.transports.split(",") if t),
        baseline=a.baseline.resolve() if a.baseline else None,
        prefilled=a.prefilled,
        trace_dir=a.trace,
    )


# --------------------------------------------------------------------------- the floor


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def floor_child(state_dir: str, pool: RequestPool, cpu: int, budget_s: float, out: Any) -> None:
    """Certificates/s of the raw primitives on one core, measured in this (pinned) process."""
    os.sched_setaffinity(0, {cpu})
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from jwt.algorithms import RSAAlgorithm

    from ca.common.clock import SystemClock
    from ca.issuance.keys import KeyAlgorithm
    from ca.issuance.selfsigned import RootFactory
    from ca.issuance.slots import RotationPolicy
    from ca.server.devtoken import DevTokenIssuer
    from ca.server.keyring_store import KeyringDirectory

    clock = SystemClock()
    jwk = DevTokenIssuer.load_or_create(Path(state_dir), clock).jwks()["keys"][0]
    token_key: Any = RSAAlgorithm.from_jwk(jwk)
    stored, _ = KeyringDirectory(Path(state_dir)).load_or_create(
        RootFactory(trust_domain="cluster.local", key_algorithm=KeyAlgorithm.parse("ec-p256"), clock=clock),
        RotationPolicy(),
        clock,
    )
    authority = stored.keyring.signing_authority()
    issuer_cert, issuer_key = authority.signing_cert, authority.signing_key
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    )
    n = len(pool)
    tokens = [t.encode() for t in pool.tokens]
    csrs = [c.encode() for c in pool.csr_pems]

    def one(i: int) -> object:
        head, payload, signature = tokens[i % n].split(b".")
        token_key.verify(_b64(signature.decode()), head + b"." + payload, padding.PKCS1v15(), hashes.SHA256())
        _, _, namespace, account = json.loads(_b64(payload.decode()))["sub"].split(":")
        csr = x509.load_pem_x509_csr(csrs[i % n])
        if not csr.is_signature_valid:
            raise RuntimeError("a pool CSR does not verify")
        now = clock.now()
        key = csr.public_key()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer_cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + (issuer_cert.not_valid_after_utc - now) / 1000)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://cluster.local/ns/{namespace}/sa/{account}")]
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(aki, critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        return leaf

    for i in range(50):
        one(i)
    rates = []
    for _ in range(3):  # three slices; the median
        ops, start = 0, time.perf_counter()
        while time.perf_counter() - start < budget_s / 3:
            for _ in range(20):
                one(ops)
                ops += 1
        rates.append(ops / (time.perf_counter() - start))
    out.put(statistics.median(rates))


def measure_floor(ctx: Any, state_dir: Path, pool: RequestPool, s: PinnedSettings) -> float:
    queue = ctx.Queue()
    proc = ctx.Process(target=floor_child, args=(str(state_dir), pool, s.server_cpu, s.floor_s, queue))
    proc.start()
    try:
        rate: float = queue.get(timeout=s.floor_s + 120)
    finally:
        proc.join(timeout=10)
    return rate


def server_token_cache(pool_size: int) -> int:
    """The server's default cache, or less for a small (--quick) pool: striped sending reuses
    a token only after the whole pool, so an LRU cache smaller than the pool never hits."""
    return min(SERVER_TOKEN_CACHE, pool_size // 2)


# --------------------------------------------------------------------------- load


@dataclass
class Phase:
    certs_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu: float  # cores used by the server and its children
    client_cpu: float
    error_samples: tuple[str, ...] = ()  # a few failed calls' status and details
    timeline: tuple[tuple[float, float], ...] = ()  # (start, latency) of each OK call, by start


def _specs(
    s: PinnedSettings, port: int, root_pem: bytes, pool: RequestPool, total_rate: float | None
) -> list[LoadSpec]:
    channels = s.clients * s.channels_per_client
    per_channel = split_evenly(s.in_flight, channels)
    specs, base = [], 0
    for count in split_evenly(channels, s.clients):
        specs.append(
            LoadSpec(
                port=port,
                root_pem=root_pem,
                pool=pool,
                channels=count,
                in_flight=tuple(per_channel[base : base + count]),
                channel_base=base,
                total_channels=channels,
                total_rate=total_rate,
                warmup_s=s.warmup_s,
                duration_s=s.duration_s,
                drain_s=5.0 if total_rate is None else 15.0,
                striped=True,
                cpus=(s.load_cpu,),
            )
        )
        base += count
    return specs


def run_phase(
    ctx: Any,
    s: PinnedSettings,
    server_pid: int,
    specs: list[LoadSpec],
    during: Callable[[], None] | None = None,
) -> Phase:
    results_queue, go, t0 = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=client_process, args=(spec, i, results_queue, go, t0), daemon=True)
        for i, spec in enumerate(specs)
    ]
    try:
        for proc in procs:
            proc.start()
        collect(results_queue, "ready", len(procs), 90)
        t0.value = time.perf_counter() + 0.05
        go.set()
        w_start = t0.value + s.warmup_s
        sleep_until(w_start)
        cpu0 = process_cpu_seconds(server_pid)
        if during is not None:
            during()
        sleep_until(w_start + s.duration_s)
        cpu1 = process_cpu_seconds(server_pid)
        results: list[ClientResult] = collect(results_queue, "done", len(procs), 60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)
    latencies = sorted(x for r in results for x in r.latencies_s)
    timeline = sorted(pair for r in results for pair in zip(r.started_s, r.latencies_s, strict=True))
    return Phase(
        certs_per_s=sum(r.ok_in_window for r in results) / s.duration_s,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        errors=sum(sum(r.errors.values()) for r in results),
        server_cpu=(cpu1 - cpu0) / s.duration_s,
        client_cpu=sum(r.cpu_s for r in results) / s.duration_s,
        error_samples=tuple(sample for r in results for sample in r.error_samples)[:3],
        timeline=tuple(timeline),
    )


# --------------------------------------------------------------------------- rounds


@dataclass
class Setting:
    label: str
    ledger: str
    peak: list[Phase] = field(default_factory=list)
    half: list[Phase] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)  # the floor measured right before each run
    half_fsyncs: list[tuple[float, float, float]] = field(default_factory=list)  # see fsync_ms
    prefilled: Path | None = None  # a ledger file copied into the state dir before each run
    transport: str | None = None  # not meshca: the transport floor server on this gRPC server model
    code: Path | None = None  # a baseline tree's `ca` (--baseline)

    @property
    def key(self) -> str:
        if self.transport is not None:
            return f"transport-{self.transport}"
        if self.code is not None:
            return f"baseline-{self.ledger}"
        return "full" if self.prefilled is not None else self.ledger


def prefill(tmp: Path, records: int) -> Path:
    """A SQLite ledger of `records` realistic entries (scripts/bench_audit.py's generator)."""
    import bench_audit

    path = tmp / "prefilled.db"
    started = time.perf_counter()
    print(f"  writing a ledger of {records:,} records ...", flush=True)
    bench_audit.generate(path, records)
    print(
        f"  written in {time.perf_counter() - started:.0f}s, {path.stat().st_size / 2**20:,.0f} MiB",
        flush=True,
    )
    return path


def profile_phase(
    ctx: Any, s: PinnedSettings, state_dir: Path, tmp: Path, pool: RequestPool, ledger: str
) -> None:
    """An extra phase, not in the table: perf, then py-spy, on a server at the peak."""
    import _bench_profile as prof

    out_dir = s.profile_dir or tmp / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    long = PinnedSettings(**{**s.__dict__, "duration_s": 2 * s.profile_s + 1.0})
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    with ServerFleet(
        state_dir, logs, "ec-p256", ledger=ledger, cpus=(s.server_cpu,), grpc_server=s.grpc_server
    ) as fleet:
        pid, port = fleet.start(token_cache_size=server_token_cache(len(pool)))
        root_pem = (state_dir / "root-cert.pem").read_bytes()
        perf_file, spy_file = out_dir / f"perf-{ledger}.data", out_dir / f"py-spy-{ledger}.folded"
        server_tids: list[int] = []

        def sample() -> None:
            for process in [pid, *descendants(pid)]:
                server_tids.extend(int(t.name) for t in Path(f"/proc/{process}/task").iterdir())
            if prof.perf_available():
                prof.record_perf(s.server_cpu, s.profile_s, perf_file)
            prof.record_pyspy(pid, s.profile_s, spy_file)

        phase = run_phase(ctx, long, pid, _specs(long, port, root_pem, pool, None), sample)
    rate = f"{phase.certs_per_s:,.0f}/s while sampled"
    print(f"\nProfile of the server with --ledger {ledger} at the peak ({rate})")
    if perf_file.exists():
        shares, samples = prof.perf_by_dso(perf_file, server_tids)
        prof.print_shares(f"perf, CPU {s.server_cpu}, server processes only ({samples} samples):", shares)
    groups, frames, processes = prof.pyspy_breakdown(spy_file, pid)
    prof.print_shares("py-spy, by process:", processes)
    prof.print_shares("py-spy, innermost Python frame by what it does:", groups)
    prof.print_shares("py-spy, top innermost functions:", frames, limit=25)
    print(f"(raw files in {out_dir})")


def fsync_ms(directory: Path, count: int = 200, gap_s: float = 0.0) -> tuple[float, float, float]:
    """p50, p99 and p99.9 of a 200-byte write + fsync in `directory`, back to back or one every
    `gap_s`: the ledger's commit latency floor (SQLite syncs its WAL on every commit, and a
    certificate waits for its record). Spaced as the half-load commits are, a virtual disk can
    take several times longer in its tail than back to back."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 200)
            started = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - started) * 1e3)
            if gap_s:
                time.sleep(gap_s)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return percentile(times, 0.5), percentile(times, 0.99), percentile(times, 0.999)


def run_rounds(s: PinnedSettings) -> tuple[list[Setting], int]:
    ctx = multiprocessing.get_context("spawn")
    settings = []
    for label, ledger in LEDGER_SETTINGS:
        if ledger in s.ledgers:
            settings.append(Setting(label, ledger))
            if s.baseline is not None:
                settings.append(Setting(f"{label}, baseline", ledger, code=s.baseline))
    with tempfile.TemporaryDirectory(prefix="meshca-pinned-") as tmp_name:
        tmp = Path(tmp_name)
        state_dir = tmp / "state"
        state_dir.mkdir(mode=0o700)
        os.sched_setaffinity(0, {s.load_cpu})  # the pool, the floor's parent and clients
        for model in s.transports:
            settings.append(Setting(f"transport only ({model}, pre-issued)", "off", transport=model))
        if s.prefilled:
            settings.append(
                Setting(f"ledger on, {s.prefilled:,} records", "auto", prefilled=prefill(tmp, s.prefilled))
            )
        print(f"  making a pool of {s.pool} distinct tokens and CSRs ...", flush=True)
        pool = make_pool(state_dir, s.pool)
        for r in range(s.rounds):
            sync50, sync99, _ = fsync_ms(state_dir)
            print(
                f"round {r + 1}/{s.rounds}: fsync on the state dir's disk, back to back, "
                f"p50/p99 {sync50:.2f}/{sync99:.2f} ms",
                flush=True,
            )
            for setting in settings:
                # The floor right before each setting: on a shared machine the core's speed
                # drifts within a round, and a ratio is only as good as its floor's timing.
                setting.floors.append(measure_floor(ctx, state_dir, pool, s))
                _one_setting(ctx, s, setting, state_dir, tmp, pool)
        if s.profile_s > 0:
            for ledger in s.profile_ledgers:
                profile_phase(ctx, s, state_dir, tmp, pool, ledger)
    return settings, len(pool)


def _one_setting(
    ctx: Any,
    s: PinnedSettings,
    setting: Setting,
    state_dir: Path,
    tmp: Path,
    pool: RequestPool,
) -> None:
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    ledger_file = state_dir / "ledger.db"
    if setting.prefilled is not None:
        shutil.copyfile(setting.prefilled, ledger_file)
    model = setting.transport or s.grpc_server
    with ServerFleet(
        state_dir,
        logs,
        "ec-p256",
        ledger=setting.ledger,
        cpus=(s.server_cpu,),
        grpc_server=model,
        code=setting.code,
    ) as fleet:
        if setting.transport is not None:
            fleet.pool_file = tmp / "pool.json"
            if not fleet.pool_file.exists():
                write_pool_file(fleet.pool_file, pool)
        pid, port = fleet.start(
            token_cache_size=server_token_cache(len(pool)), floor=setting.transport is not None, timeout_s=120
        )
        root_pem = (state_dir / "root-cert.pem").read_bytes()
        peak = run_phase(ctx, s, pid, _specs(s, port, root_pem, pool, None))
        half = run_phase(ctx, s, pid, _specs(s, port, root_pem, pool, peak.certs_per_s / 2))
    setting.peak.append(peak)
    setting.half.append(half)
    print(
        f"  {setting.label}: floor {setting.floors[-1]:,.0f}/s; {peak.certs_per_s:,.0f}/s, p50/p99 "
        f"{peak.p50_ms:.1f}/{peak.p99_ms:.1f} ms, server {peak.server_cpu:.2f} cores, clients "
        f"{peak.client_cpu:.2f}; half load p50/p99 {half.p50_ms:.2f}/{half.p99_ms:.2f} ms; "
        f"errors {peak.errors + half.errors}",
        flush=True,
    )
    for sample in (*peak.error_samples, *half.error_samples)[:3]:
        print(f"    failed: {sample}", flush=True)
    if s.trace_dir is not None:
        write_trace(s.trace_dir, setting, half)
    if setting.ledger != "off" and half.certs_per_s > 0:
        spacing_s = 1 / half.certs_per_s  # about one commit per certificate at half load
        setting.half_fsyncs.append(fsync_ms(state_dir, count=HALF_LOAD_FSYNCS, gap_s=spacing_s))
        sync50, sync99, sync999 = setting.half_fsyncs[-1]
        print(
            f"    fsync spaced as its half-load commits (one per {spacing_s * 1e3:.1f} ms): "
            f"p50/p99/p99.9 {sync50:.2f}/{sync99:.2f}/{sync999:.2f} ms",
            flush=True,
        )
    if ledger_file.exists():  # the next round starts from an empty ledger again
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger_file}{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- trace


BURST_GAP_S = 0.05  # slow calls closer than this in start time belong to one burst


def slow_bursts(timeline: Sequence[tuple[float, float]], q: float = 0.99) -> list[tuple[float, int, float]]:
    """The calls slower than the `q` quantile, grouped into bursts by start time: (first start,
    calls, worst latency) per burst. A few long bursts point at a stall (a checkpoint, a
    collection); slow calls spread evenly point at queueing."""
    if not timeline:
        return []
    threshold = percentile(sorted(latency for _, latency in timeline), q)
    bursts: list[tuple[float, int, float]] = []
    last = -math.inf
    for start, latency in timeline:
        if latency < threshold:
            continue
        if start - last > BURST_GAP_S or not bursts:
            bursts.append((start, 1, latency))
        else:
            first, calls, worst = bursts[-1]
            bursts[-1] = (first, calls + 1, max(worst, latency))
        last = start
    return bursts


def write_trace(directory: Path, setting: Setting, half: Phase) -> None:
    name = re.sub(r"[^a-z0-9]+", "-", setting.label.lower()).strip("-")
    path = directory / f"{name}-round{len(setting.half)}.csv"
    with path.open("w") as out:
        out.write("start_s,latency_ms\n")
        for start, latency in half.timeline:
            out.write(f"{start:.6f},{latency * 1e3:.3f}\n")
    bursts = slow_bursts(half.timeline)
    if not bursts:
        return
    t0 = half.timeline[0][0]
    shown = ", ".join(
        f"{first - t0:.2f}s x{calls} (<= {worst * 1e3:.1f} ms)" for first, calls, worst in bursts[:12]
    )
    print(f"    slowest 1% at half load: {len(bursts)} burst(s): {shown}; trace {path}", flush=True)


# --------------------------------------------------------------------------- report


def spread(values: Sequence[float], fmt: str) -> str:
    """The median, with (min-max) when there is more than one value; '-' for none."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def _ratios(by_ledger: dict[str, Setting], top: str, bottom: str) -> list[float]:
    if top not in by_ledger or bottom not in by_ledger:
        return []
    pairs = zip(by_ledger[top].peak, by_ledger[bottom].peak, strict=True)
    return [a.certs_per_s / b.certs_per_s for a, b in pairs]


def report(s: PinnedSettings, settings: list[Setting], pool_size: int, elapsed_s: float) -> dict[str, Any]:
    print()
    print(
        f"Pinned: server and its children on CPU {s.server_cpu}, {s.clients} load processes on CPU "
        f"{s.load_cpu}; {s.in_flight} in flight; {pool_size} distinct tokens and CSRs (token cache "
        f"{server_token_cache(pool_size)}, never hit); median of {s.rounds} round(s) (min-max)"
    )
    header = (
        "| run | floor | end to end | ratio | p50/p99 at peak | p50/p99 at half load | server CPU per cert |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for st in settings:
        rates = [p.certs_per_s for p in st.peak]
        ratios = [p.certs_per_s / f for p, f in zip(st.peak, st.floors, strict=True)]
        cpu_per_cert = [p.server_cpu / p.certs_per_s * 1e3 for p in st.peak if p.certs_per_s]
        p50s, p99s = [p.p50_ms for p in st.peak], [p.p99_ms for p in st.peak]
        h50s, h99s = [p.p50_ms for p in st.half], [p.p99_ms for p in st.half]
        print(
            f"| {st.label} | {spread(st.floors, ',.0f')}/s | {spread(rates, ',.0f')}/s | "
            f"{'-' if st.transport else '**' + spread(ratios, '.2f') + '**'} | "
            f"{statistics.median(p50s):.1f}/{statistics.median(p99s):.1f} ms | "
            f"{statistics.median(h50s):.2f}/{spread(h99s, '.2f')} ms | {spread(cpu_per_cert, '.3f')} ms |"
        )
        errors = sum(p.errors for p in st.peak + st.half)
        if errors:
            print(f"  {st.label}: {errors} request(s) failed")
        summary[st.label] = {
            "floor_per_s": st.floors,
            "certs_per_s": rates,
            "ratio": ratios,
            "p50_ms": p50s,
            "p99_ms": p99s,
            "half_p50_ms": h50s,
            "half_p99_ms": h99s,
            "server_cpu_ms_per_cert": cpu_per_cert,
            "server_cpu_cores": [p.server_cpu for p in st.peak],
            "client_cpu_cores": [p.client_cpu for p in st.peak],
            "errors": errors,
            "half_load_fsync_p50_p99_p999_ms": st.half_fsyncs,
        }
    for st in settings:
        if st.half_fsyncs:
            fsync99s = spread([f[1] for f in st.half_fsyncs], ".2f")
            print(f"{st.label}: the disk's fsync p99 at its half-load commit spacing {fsync99s} ms")
    by_ledger = {st.key: st for st in settings}
    ratio_on_off = _ratios(by_ledger, "auto", "off")
    if ratio_on_off:
        print(f"ledger on / ledger off: {spread(ratio_on_off, '.2f')}")
    for ledger in ("off", "auto"):
        versus = _ratios(by_ledger, ledger, f"baseline-{ledger}")
        if versus:
            print(f"{by_ledger[ledger].label} / baseline: {spread(versus, '.2f')}")
    full = _ratios(by_ledger, "full", "auto")
    if full:
        print(f"{by_ledger['full'].label} / empty ledger: {spread(full, '.2f')}")
    busy = max(p.client_cpu for st in settings for p in st.peak)
    if busy > 0.9:
        print(f"WARNING: the load generator used {busy:.2f} of its core: the figures may be its limit")
    print(f"elapsed {elapsed_s:.0f}s")
    return {
        "method": "pinned",
        "settings": summary,
        "ledger_on_over_off": ratio_on_off,
        "prefilled_over_empty": full,
    }


def main(argv: Sequence[str]) -> int:
    s = parse_pinned(argv)
    started = time.perf_counter()
    settings, pool_size = run_rounds(s)
    summary = report(s, settings, pool_size, time.perf_counter() - started)
    print(json.dumps(summary, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    return 0
