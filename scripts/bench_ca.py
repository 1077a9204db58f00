#!/usr/bin/env python3
"""Benchmark meshca's certificate issuance: the in-process ceiling and end to end over gRPC/TLS.

Run from the project root with the project's virtualenv:

    .venv/bin/python scripts/bench_ca.py                 # pinned, 3 rounds, about 4 minutes
    .venv/bin/python scripts/bench_ca.py --quick         # pinned smoke run
    .venv/bin/python scripts/bench_ca.py --profile 8     # pinned, with a py-spy profile of the server
    .venv/bin/python scripts/bench_ca.py --method shared # the older method below, about 4.5 minutes
    .venv/bin/python scripts/bench_ca.py --method shared --ledger-phase only   # its (d), 2 minutes

The default method, pinned, is described in scripts/_bench_pinned.py: the server and all its
children on one core, the load on the other, distinct tokens, the raw-primitive floor measured
in the same run, ledger on and off in the same run, and the ratio end to end / floor for each.

The older "shared" method lets the server(s) and clients share every core. For the CA key type
chosen with --ca-key-type it prints:

  (a) the in-process ceiling on one core: token signature check, CSR parse + verify and
      leaf build + sign, each in us/op, and all three together as certificates/s;
  (b) end-to-end issuance through one `meshca serve` process over TLS with token
      validation, closed loop at the peak, with the token cache on and off, against (a);
  (c) latency at half of each peak rate: open loop on a fixed timetable, latency counted
      from the scheduled send time so that queueing shows;
  (d) what the issuance ledger costs: one `meshca serve` with `--ledger off`, with the
      default SQLite ledger (`--ledger auto`) and with a PostgreSQL ledger (a fresh database
      on --postgres), under the same closed-loop load, in interleaved rounds (median), and
      the ratios ledger / no ledger; then the latency each adds at half the no-ledger
      peak (open loop, as in (c)).

The servers of (a)-(c) run with `--ledger off`, so that those phases measure issuance
alone (`meshca serve` records every issuance in a SQLite ledger by default); (d) adds the
ledger. After (d) each ledger's records are counted and verified.

"Peak" is found by a short closed-loop sweep over requests in flight (--concurrency
fixes it instead): the smallest level within 10% of the best sweep rate. Rates on this
kind of shared host vary by about that much from run to run, and the server's rate is
flat once it is saturated, so this keeps the printed latency free of needless queueing.

As a yardstick for the transport, (b) also measures a server built like `meshca serve`
whose handler only returns a response issued in advance (the "transport floor").

It is a benchmark, not a test: it prints figures and ratios and ends with one JSON line.
Everything runs on loopback in a temporary state directory; all subprocesses are killed
at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _bench_common
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # for ca, if not installed

from _bench_common import (
    ClientResult,
    LedgerCheck,
    LoadSpec,
    RequestPool,
    ServerFleet,
    check_ledger,
    client_process,
    collect,
    fresh_postgres_database,
    make_pool,
    percentile,
    process_cpu_seconds,
    sleep_until,
    split_evenly,
    write_pool_file,
)

DEFAULT_CACHE = 10_000  # `meshca serve`'s default --token-cache-size
FLOOR_LABEL = "transport floor (lookup handler)"
KNEE = 0.90  # peak = the smallest in-flight level reaching this share of the best sweep rate


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    duration_s: float  # measured window of each main phase
    warmup_s: float
    sweep_s: float  # measured window of each sweep step
    sweep_warmup_s: float
    stage_budget_s: float  # time bound of each in-process stage, over all rounds
    rounds: int  # in-process stages are measured in this many interleaved rounds (median)
    levels: tuple[int, ...]  # requests in flight tried by the sweep
    clients: int  # client processes
    channels_per_client: int  # TLS channels (connections) per client process
    pool: int
    ca_key_type: str
    grpc_workers: int | None
    grpc_server: str | None
    quick: bool
    ledger_phase: str = "run"  # run (after (a)-(c)), only, skip
    ledger_rounds: int = 3
    ledger_in_flight: int | None = None
    postgres: str | None = None  # admin URL of the server that gets the PostgreSQL ledger's database


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds measured per phase (default 8)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds before each phase")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight, closed loop (default: sweep 4,8,16,32,64 and take the peak)",
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--channels", type=int, default=4, help="TLS channels per client process (default 4)")
    parser.add_argument("--pool", type=int, default=None, help="pre-generated CSRs and tokens (default 2000)")
    parser.add_argument(
        "--ca-key-type", default="ec-p256", help="CA key type: ec-p256 (default), rsa-2048, ..."
    )
    parser.add_argument(
        "--grpc-server",
        choices=["threaded", "asyncio"],
        default=None,
        help="pass --grpc-server to meshca serve",
    )
    parser.add_argument("--grpc-workers", type=int, default=None, help="pass --grpc-workers to meshca serve")
    parser.add_argument("--quick", action="store_true", help="short phases and a small pool: a smoke run")
    parser.add_argument(
        "--ledger-phase",
        choices=["run", "only", "skip"],
        default="run",
        help="(d), the issuance ledger's cost: run it after (a)-(c) (default), run only it, or skip it",
    )
    parser.add_argument(
        "--ledger-rounds", type=int, default=None, help="interleaved rounds per ledger setting (default 3)"
    )
    parser.add_argument(
        "--ledger-in-flight",
        type=int,
        default=None,
        help="requests in flight in (d) (default: the most of the sweep, 64; 16 with --quick)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MESHCA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL admin URL for (d): a fresh database is made there and dropped after; "
        "'off' leaves PostgreSQL out (default postgresql://postgres@127.0.0.1:5432/test)",
    )
    args = parser.parse_args(argv)

    from ca.issuance.keys import KeyAlgorithm

    quick = bool(args.quick)
    duration = args.duration if args.duration is not None else (1.5 if quick else 8.0)
    if args.concurrency is not None:
        levels: tuple[int, ...] = (max(1, args.concurrency),)
    else:
        levels = (4, 16) if quick else (4, 8, 16, 32, 64)
    return Settings(
        duration_s=duration,
        warmup_s=args.warmup if args.warmup is not None else min(2.0, max(0.5, duration / 4)),
        sweep_s=0.75 if quick else max(1.0, duration / 4),
        sweep_warmup_s=0.3 if quick else 0.5,
        stage_budget_s=0.3 if quick else 1.5,
        rounds=3 if quick else 5,
        levels=levels,
        clients=max(1, args.clients),
        channels_per_client=max(1, args.channels),
        pool=max(16, args.pool if args.pool is not None else (200 if quick else 2000)),
        ca_key_type=KeyAlgorithm.parse(args.ca_key_type).value,
        grpc_workers=args.grpc_workers,
        grpc_server=args.grpc_server,
        quick=quick,
        ledger_phase=args.ledger_phase,
        ledger_rounds=max(1, args.ledger_rounds if args.ledger_rounds is not None else (1 if quick else 3)),
        ledger_in_flight=max(1, args.ledger_in_flight) if args.ledger_in_flight else None,
        postgres=None if args.postgres in ("", "off", "none") else args.postgres,
    )


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- (a) in-process


@dataclass
class Ceiling:
    token_us: float  # JwtAuthenticator.authenticate with TokenCache(0): signature + claims
    csr_us: float  # parse_csr: parse + self-signature verify + key policy
    issue_us: float  # Issuer.issue: build + sign the leaf, PEM, chain
    combined_us: float  # the three in one loop
    no_token_us: float  # CSR + issue only: the ceiling when the token is a cache hit
    handler_us: float  # CertificateService.create_certificate, no gRPC, token cache off
    handler_cached_us: float  # the same with the token cache on (every token seen before)
    combined_spread_us: tuple[float, float] = (math.nan, math.nan)  # min, max over the rounds

    @property
    def sum_us(self) -> float:
        return self.token_us + self.csr_us + self.issue_us

    @property
    def certs_per_s(self) -> float:
        return 1e6 / self.combined_us

    @property
    def no_token_certs_per_s(self) -> float:
        return 1e6 / self.no_token_us


def time_per_op(op: Callable[[int], object], *, budget_s: float, max_ops: int, warmup_ops: int = 0) -> float:
    """Microseconds per call of op(i), i = 0, 1, ...; bounded by count and by time."""
    for i in range(warmup_ops):
        op(i)
    ops = 0
    start = time.perf_counter()
    while ops < max_ops:
        for _ in range(10):
            op(ops)
            ops += 1
        if time.perf_counter() - start >= budget_s:
            break
    return (time.perf_counter() - start) / ops * 1e6


class _FakeContext:
    """Just enough of grpc.ServicerContext for CertificateService.create_certificate."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"ssl"], "security_level": [b"TLS_PRIVACY_AND_INTEGRITY"]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def abort(self, code: object, details: str) -> None:
        raise RuntimeError(f"the handler refused a benchmark request: {code}: {details}")


def _service(state_dir: Path, key_type: str, cache_size: int) -> Any:
    """The CertificateService `meshca serve` would build for these flags (no ports bound)."""
    from ca.cli.main import build_parser
    from ca.server.settings import serve_config
    from ca.server.wiring import build_server

    argv = [
        "serve",
        "--state-dir",
        str(state_dir),
        "--listen",
        "127.0.0.1:0",
        "--renew-listen",
        "off",
        "--metrics-listen",
        "off",
        "--ca-key-type",
        key_type,
        "--token-cache-size",
        str(cache_size),
        "--ledger",
        "off",
    ]
    return build_server(serve_config(build_parser({}).parse_args(argv), {})).service


def measure_ceiling(settings: Settings, state_dir: Path, pool: RequestPool) -> Ceiling:
    from ca.auth.base import Credentials
    from ca.auth.jwt_token import JwtAuthenticator, TokenRules
    from ca.auth.token_cache import TokenCache
    from ca.common.clock import SystemClock
    from ca.issuance.csr import parse_csr
    from ca.issuance.issuer import IssuancePolicy, Issuer
    from ca.issuance.keys import KeyAlgorithm
    from ca.issuance.selfsigned import RootFactory
    from ca.issuance.slots import RotationPolicy
    from ca.server.devtoken import DevTokenIssuer
    from ca.server.keyring_store import KeyringDirectory

    clock = SystemClock()
    dev = DevTokenIssuer.load_or_create(state_dir, clock)
    authenticator = JwtAuthenticator(
        keys=dev.key_set(),
        rules=TokenRules(issuers=(dev.issuer,), audiences=("istio-ca",), trust_domain="cluster.local"),
        clock=clock,
        cache=TokenCache(0),  # every token verified
    )
    factory = RootFactory(
        trust_domain="cluster.local", key_algorithm=KeyAlgorithm.parse(settings.ca_key_type), clock=clock
    )
    stored, _ = KeyringDirectory(state_dir).load_or_create(factory, RotationPolicy(), clock)
    authority = stored.keyring.signing_authority()  # the same CA the servers will load
    policy = IssuancePolicy()
    issuer = Issuer(authority=authority, policy=policy, clock=clock)
    n = len(pool)
    credentials = [Credentials(bearer_token=t, peer_address="ipv4:127.0.0.1:40000") for t in pool.tokens]
    callers = [authenticator.authenticate(c) for c in credentials]
    ids = [c.spiffe_id for c in callers if c is not None]
    parsed = [parse_csr(pem, policy.key_policy) for pem in pool.csr_pems]
    if [i.uri for i in ids] != list(pool.spiffe_ids):
        raise RuntimeError("the in-process authenticator disagrees with the pool's identities")

    def token(i: int) -> object:
        return authenticator.authenticate(credentials[i % n])

    def csr(i: int) -> object:
        return parse_csr(pool.csr_pems[i % n], policy.key_policy)

    def issue(i: int) -> object:
        return issuer.issue(spiffe_id=ids[i % n], csr=parsed[i % n], requested_ttl_seconds=0)

    def combined(i: int) -> object:
        caller = authenticator.authenticate(credentials[i % n])
        request = parse_csr(pool.csr_pems[i % n], policy.key_policy)
        assert caller is not None
        return issuer.issue(spiffe_id=caller.spiffe_id, csr=request, requested_ttl_seconds=0)

    def no_token(i: int) -> object:
        request = parse_csr(pool.csr_pems[i % n], policy.key_policy)
        return issuer.issue(spiffe_id=ids[i % n], csr=request, requested_ttl_seconds=0)

    contexts = [_FakeContext(m) for m in pool.metadata]

    def handler(cache_size: int) -> Callable[[int], object]:
        service = _service(state_dir, settings.ca_key_type, cache_size)
        for i in range(n):  # every token seen once, as on a server that has run a while
            service.create_certificate(pool.requests[i], contexts[i])
        return lambda i: service.create_certificate(pool.requests[i % n], contexts[i % n])

    stages: dict[str, Callable[[int], object]] = {
        "token_us": token,
        "csr_us": csr,
        "issue_us": issue,
        "combined_us": combined,
        "no_token_us": no_token,
        "handler_us": handler(0),
        "handler_cached_us": handler(DEFAULT_CACHE),
    }
    # Interleaved rounds, median per stage: a burst of noise from a neighbour on the host
    # then spoils one round of every stage rather than all of one stage.
    samples: dict[str, list[float]] = {name: [] for name in stages}
    per_round = settings.stage_budget_s / settings.rounds
    for r in range(settings.rounds):
        for name, op in stages.items():
            samples[name].append(
                time_per_op(op, budget_s=per_round, max_ops=100_000, warmup_ops=30 if r == 0 else 0)
            )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    spread = (min(samples["combined_us"]), max(samples["combined_us"]))
    return Ceiling(**medians, combined_spread_us=spread)


# --------------------------------------------------------------------------- (b)-(c) end to end


@dataclass
class LoadResult:
    label: str
    servers: int
    token_cache: int
    mode: str  # "closed" or "open"
    in_flight: int | None  # closed loop
    channels: int
    target_rate: float | None  # open loop
    duration_s: float
    certs_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    sent: int
    errors: dict[str, int]
    error_samples: list[str]
    unfinished: int
    server_cpu_cores: float  # CPU time of all server processes / window
    client_cpu_cores: float  # CPU time of all client processes / window
    max_send_lag_ms: float
    sweep: list[tuple[int, float, float]] = field(default_factory=list)  # (in flight, certs/s, p50 ms)


@dataclass
class Bench:
    settings: Settings
    pool: RequestPool
    fleet: ServerFleet
    root_pem: bytes = b""
    ctx: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))

    def _specs(
        self, port: int, in_flight: int | None, total_rate: float | None, warmup_s: float, duration_s: float
    ) -> list[LoadSpec]:
        s = self.settings
        channels = s.clients * s.channels_per_client
        clients = s.clients
        if in_flight is not None:  # no channel without a request in flight
            channels = max(1, min(channels, in_flight))
            clients = min(clients, channels)
        per_channel = split_evenly(in_flight, channels) if in_flight is not None else [0] * channels
        specs, base = [], 0
        for count in split_evenly(channels, clients):
            specs.append(
                LoadSpec(
                    port=port,
                    root_pem=self.root_pem,
                    pool=self.pool,
                    channels=count,
                    in_flight=tuple(per_channel[base : base + count]),
                    channel_base=base,
                    total_channels=channels,
                    total_rate=total_rate,
                    warmup_s=warmup_s,
                    duration_s=duration_s,
                    drain_s=5.0 if total_rate is None else 15.0,
                )
            )
            base += count
        return specs

    def run(
        self,
        label: str,
        port: int,
        token_cache: int,
        *,
        in_flight: int | None = None,
        total_rate: float | None = None,
        warmup_s: float | None = None,
        duration_s: float | None = None,
    ) -> LoadResult:
        """One phase: closed loop with `in_flight` requests, or open loop at `total_rate`/s."""
        warmup = self.settings.warmup_s if warmup_s is None else warmup_s
        duration = self.settings.duration_s if duration_s is None else duration_s
        specs = self._specs(port, in_flight, total_rate, warmup, duration)
        results_queue = self.ctx.Queue()
        go = self.ctx.Event()
        t0 = self.ctx.Value("d", 0.0)
        procs = [
            self.ctx.Process(target=client_process, args=(spec, i, results_queue, go, t0), daemon=True)
            for i, spec in enumerate(specs)
        ]
        server_pids = self.fleet.running_pids()
        mode = f"{in_flight} in flight" if total_rate is None else f"open loop at {total_rate:,.0f}/s"
        progress(f"{label}: {len(server_pids)} server(s), {mode}, {warmup:g}s warm-up + {duration:g}s")
        try:
            for proc in procs:
                proc.start()
            collect(results_queue, "ready", len(procs), timeout_s=90)
            t0.value = time.perf_counter() + 0.05
            go.set()
            w_start = t0.value + warmup
            sleep_until(w_start)
            cpu0 = [process_cpu_seconds(pid) for pid in server_pids]
            sleep_until(w_start + duration)
            cpu1 = [process_cpu_seconds(pid) for pid in server_pids]
            drain = max(spec.drain_s for spec in specs)
            results: list[ClientResult] = collect(results_queue, "done", len(procs), timeout_s=drain + 30)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
            for proc in procs:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
        latencies = sorted(x for r in results for x in r.latencies_s)
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r.errors)
        return LoadResult(
            label=label,
            servers=len(server_pids),
            token_cache=token_cache,
            mode="closed" if total_rate is None else "open",
            in_flight=in_flight,
            channels=sum(spec.channels for spec in specs),
            target_rate=total_rate,
            duration_s=duration,
            certs_per_s=sum(r.ok_in_window for r in results) / duration,
            p50_ms=percentile(latencies, 0.50) * 1e3,
            p99_ms=percentile(latencies, 0.99) * 1e3,
            p999_ms=percentile(latencies, 0.999) * 1e3,
            max_ms=(latencies[-1] * 1e3) if latencies else math.nan,
            sent=sum(r.sent_in_window for r in results),
            errors=dict(errors),
            error_samples=[e for r in results for e in r.error_samples][:3],
            unfinished=sum(r.unfinished for r in results),
            server_cpu_cores=(sum(cpu1) - sum(cpu0)) / duration,
            client_cpu_cores=sum(r.cpu_s for r in results) / duration,
            max_send_lag_ms=max(r.max_send_lag_s for r in results) * 1e3,
        )

    def peak(self, label: str, port: int, token_cache: int) -> LoadResult:
        """Closed loop at the peak: a short sweep over in-flight levels, then a full phase."""
        s = self.settings
        sweep: list[tuple[int, float, float]] = []
        chosen = s.levels[0]
        if len(s.levels) > 1:
            for level in s.levels:
                r = self.run(
                    f"{label}, sweep",
                    port,
                    token_cache,
                    in_flight=level,
                    warmup_s=s.sweep_warmup_s,
                    duration_s=s.sweep_s,
                )
                sweep.append((level, r.certs_per_s, r.p50_ms))
            best = max(rate for _, rate, _ in sweep)
            chosen = min(level for level, rate, _ in sweep if rate >= KNEE * best)
        result = self.run(label, port, token_cache, in_flight=chosen)
        result.sweep = sweep
        return result


# --------------------------------------------------------------------------- output


def versions() -> str:
    import cryptography
    import grpc
    import jwt

    return (
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"cryptography {cryptography.__version__}, pyjwt {jwt.__version__}"
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def print_ceiling(c: Ceiling, s: Settings) -> None:
    rows = [
        ("token signature check  (JwtAuthenticator, TokenCache(0))", c.token_us),
        ("CSR parse + signature verify  (parse_csr)", c.csr_us),
        (f"leaf build + sign  (Issuer.issue, {s.ca_key_type} CA)", c.issue_us),
        ("sum of the three", c.sum_us),
        ("all three in one loop  = CEILING", c.combined_us),
        ("  CSR + sign only (token already verified: a cache hit)", c.no_token_us),
        ("  CertificateService handler, no gRPC, token cache off", c.handler_us),
        (f"  CertificateService handler, no gRPC, token cache {DEFAULT_CACHE}", c.handler_cached_us),
    ]
    print(
        f"\n(a) In-process ceiling, one core, no gRPC/TLS, no ledger  (CA key {s.ca_key_type}; "
        f"median of {s.rounds} interleaved rounds)"
    )
    print(f"  {'step':<60}{'us/op':>8}{'ops/s':>9}")
    for name, us in rows:
        print(f"  {name:<60}{us:>8.1f}{1e6 / us:>9,.0f}")
    low, high = c.combined_spread_us
    print(
        f"  -> CEILING {c.certs_per_s:,.0f} certificates/s per core (rounds ranged {low:.0f}-{high:.0f} us); "
        f"{c.no_token_certs_per_s:,.0f}/s if every token were a cache hit"
    )
    print(
        f"  -> the service handler adds {c.handler_us - c.combined_us:+.0f} us/request to the three steps "
        f"(protobuf, metadata, metrics, logging)"
    )
    saved = c.handler_us - c.handler_cached_us
    if saved < 0.5 * c.token_us:
        print(
            f"  !! the token cache saves {saved:.0f} us/request in-process, though a token check costs "
            f"{c.token_us:.0f} us: with --token-cache-size {DEFAULT_CACHE} every token seems to be "
            f"verified again"
        )


def _errors(r: LoadResult) -> str:
    bad = sum(r.errors.values()) + r.unfinished
    if not bad:
        return "0"
    return f"{bad} {dict(r.errors)}" + (f" +{r.unfinished} unfinished" if r.unfinished else "")


def print_table(title: str, rows: Sequence[LoadResult], note: Callable[[LoadResult], str]) -> None:
    print(f"\n{title}")
    print(
        f"  {'run':<34}{'load':>10}{'certs/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'p99.9':>8}"
        f"{'srv CPU':>8}{'ms/cert':>8}{'cli CPU':>8}  errors"
    )
    for r in rows:
        load = f"{r.in_flight} infl" if r.mode == "closed" else f"{r.target_rate or 0:,.0f}/s"
        server_ms = 1e3 * ratio(r.server_cpu_cores, r.certs_per_s)
        print(
            f"  {r.label:<34}{load:>10}{r.certs_per_s:>9,.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
            f"{r.p999_ms:>8.2f}{r.server_cpu_cores:>8.2f}{server_ms:>8.2f}{r.client_cpu_cores:>8.2f}"
            f"  {_errors(r)}"
        )
        if text := note(r):
            print(f"      {text}")
        for sample in r.error_samples:
            print(f"      e.g. {sample}")


def sweep_text(r: LoadResult) -> str:
    if not r.sweep:
        return "in flight fixed by --concurrency"
    steps = "  ".join(f"{level}:{rate:,.0f}" for level, rate, _ in r.sweep)
    return f"sweep (in flight:certs/s)  {steps}  -> {r.in_flight} (smallest within {KNEE:.0%} of best)"


def _brief(r: LoadResult) -> dict[str, Any]:
    brief: dict[str, Any] = {
        "certs_per_s": round(r.certs_per_s, 1),
        "p50_ms": round(r.p50_ms, 2),
        "p99_ms": round(r.p99_ms, 2),
        "errors": sum(r.errors.values()) + r.unfinished,
        "server_cpu_cores": round(r.server_cpu_cores, 2),
        "client_cpu_cores": round(r.client_cpu_cores, 2),
    }
    if r.mode == "closed":
        brief["in_flight"] = r.in_flight
    else:
        brief["target_rate"] = round(r.target_rate or 0.0, 1)
    return brief


# --------------------------------------------------------------------------- main


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Results:
    ceiling: Ceiling
    peak_on: LoadResult
    half_on: LoadResult
    peak_off: LoadResult
    half_off: LoadResult
    floor: LoadResult


# --------------------------------------------------------------------------- (d) the ledger

LEDGER_OFF = "no ledger (--ledger off)"
LEDGER_SQLITE = "SQLite ledger (--ledger auto)"
LEDGER_POSTGRES = "PostgreSQL ledger"


@dataclass
class LedgerSetting:
    label: str
    ledger: str  # the --ledger value
    runs: list[LoadResult] = field(default_factory=list)
    half: LoadResult | None = None  # open loop at half the no-ledger peak: the latency a busy CA adds
    check: LedgerCheck | None = None

    @property
    def median(self) -> LoadResult:
        ordered = sorted(self.runs, key=lambda r: r.certs_per_s)
        return ordered[(len(ordered) - 1) // 2]


@dataclass
class LedgerPhase:
    in_flight: int
    in_flight_source: str
    settings: list[LedgerSetting]
    skipped: dict[str, str] = field(default_factory=dict)  # label: why it was not measured

    def get(self, label: str) -> LedgerSetting | None:
        return next((x for x in self.settings if x.label == label), None)

    def paired_ratios(self, label: str) -> list[float]:
        """Per round: `label`'s rate over the no-ledger rate of the same round."""
        off, other = self.get(LEDGER_OFF), self.get(label)
        if off is None or other is None:
            return []
        return [ratio(b.certs_per_s, a.certs_per_s) for a, b in zip(off.runs, other.runs, strict=False)]

    def cost_ratio(self, label: str) -> float:
        off, other = self.get(LEDGER_OFF), self.get(label)
        if off is None or other is None:
            return math.nan
        return ratio(other.median.certs_per_s, off.median.certs_per_s)


def measure_ledger(s: Settings, pool: RequestPool, state_dir: Path, tmp: Path) -> LedgerPhase:
    """One server per ledger setting, all up at once on their own ports; interleaved rounds."""
    with contextlib.ExitStack() as stack:
        settings = [LedgerSetting(LEDGER_OFF, "off"), LedgerSetting(LEDGER_SQLITE, "auto")]
        skipped: dict[str, str] = {}
        if s.postgres is None:
            skipped[LEDGER_POSTGRES] = "--postgres off"
        else:
            try:
                url = stack.enter_context(fresh_postgres_database(s.postgres))
                settings.append(LedgerSetting(LEDGER_POSTGRES, url))
            except Exception as err:
                skipped[LEDGER_POSTGRES] = f"no database on {s.postgres}: {str(err).strip().splitlines()[0]}"
        benches: list[tuple[LedgerSetting, Bench, int]] = []
        for setting in settings:
            logs = tmp / f"ledger-{setting.ledger if setting.ledger in ('off', 'auto') else 'postgresql'}"
            logs.mkdir()
            fleet = stack.enter_context(
                ServerFleet(
                    state_dir, logs, s.ca_key_type, s.grpc_workers, s.grpc_server, ledger=setting.ledger
                )
            )
            _, port = fleet.start(token_cache_size=DEFAULT_CACHE)
            bench = Bench(s, pool, fleet, root_pem=(state_dir / "root-cert.pem").read_bytes())
            benches.append((setting, bench, port))
        # Throughput: every server saturated by the same load (the most in flight of the sweep, or
        # --ledger-in-flight). At a few in flight a closed loop only measures the commit latency.
        in_flight = s.ledger_in_flight or max(s.levels)
        source = "--ledger-in-flight" if s.ledger_in_flight else "the most of the sweep: all saturated"
        for round_number in range(s.ledger_rounds):
            for setting, bench, port in benches:
                progress(f"(d) round {round_number + 1}/{s.ledger_rounds}")
                setting.runs.append(bench.run(setting.label, port, DEFAULT_CACHE, in_flight=in_flight))
        # Latency: the same open-loop load on each, half the no-ledger rate, as in (c).
        half_rate = settings[0].median.certs_per_s / 2
        for setting, bench, port in benches:
            progress(f"(d) latency at {half_rate:,.0f}/s: {setting.label}")
            setting.half = bench.run(f"{setting.label}, half rate", port, DEFAULT_CACHE, total_rate=half_rate)
        for _, bench, _ in benches:
            bench.fleet.stop_all()  # each server writes its final checkpoint
        for setting in settings:
            if setting.ledger != "off":
                url = sqlite_url(state_dir / "ledger.db") if setting.ledger == "auto" else setting.ledger
                setting.check = check_ledger(url, state_dir)
        return LedgerPhase(in_flight, source, settings, skipped)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def report_ledger(s: Settings, lp: LedgerPhase) -> list[tuple[str, float]]:
    """Prints (d); returns its ratio lines."""
    rounds = f"median of {s.ledger_rounds} interleaved rounds" if s.ledger_rounds > 1 else "one round"
    print_table(
        f"(d) The issuance ledger: one `meshca serve` each, token cache on, closed loop at {lp.in_flight} "
        f"in flight ({lp.in_flight_source}); {rounds}",
        [x.median for x in lp.settings],
        lambda r: _ledger_note(lp, r),
    )
    halves = [x.half for x in lp.settings if x.half is not None]
    if halves:
        print_table(
            "    and the latency each adds at half the no-ledger peak (open loop, fixed timetable)",
            halves,
            lambda r: "",
        )
    for label, why in lp.skipped.items():
        print(f"  {label:<34}skipped: {why}")
    off = lp.get(LEDGER_OFF)
    if off is not None and len(off.runs) > 1:
        for x in lp.settings:
            rates = "  ".join(f"{r.certs_per_s:,.0f}" for r in x.runs)
            print(f"  {x.label:<34}rounds: {rates} certs/s")
    sqlite_ratio = lp.cost_ratio(LEDGER_SQLITE)
    paired = lp.paired_ratios(LEDGER_SQLITE)
    if len(paired) > 1:
        # Each round's ledger run next to that round's no-ledger run: slow drifts in the
        # host's speed, which move whole rounds, cancel out of these.
        print(
            "  SQLite / no ledger, round by round: "
            + "  ".join(f"{x:.2f}" for x in paired)
            + f"  (median {statistics.median(paired):.2f})"
        )
    worst = min(sqlite_ratio, statistics.median(paired)) if paired else sqlite_ratio
    verdict = "within" if worst >= 0.85 else "OVER"
    print(
        f"  -> the SQLite ledger keeps {sqlite_ratio:.0%} of the no-ledger rate "
        f"(costs {1 - sqlite_ratio:.0%}; target: at most 15%, by the median rates and "
        f"the median round: {verdict})"
    )
    if lp.get(LEDGER_POSTGRES) is not None:
        pg_ratio = lp.cost_ratio(LEDGER_POSTGRES)
        print(f"  -> the PostgreSQL ledger keeps {pg_ratio:.0%} of it (costs {1 - pg_ratio:.0%})")
    return [
        ("SQLite ledger / no ledger, end to end", sqlite_ratio),
        ("PostgreSQL ledger / no ledger, end to end", lp.cost_ratio(LEDGER_POSTGRES)),
    ]


def _ledger_note(lp: LedgerPhase, r: LoadResult) -> str:
    setting = next(x for x in lp.settings if x.runs and x.median is r)
    if setting.check is None:
        return ""
    c = setting.check
    return (
        f"ledger after the phase: {c.entries:,} records, {c.issued:,} issuances; "
        + ("verified" if c.verified else f"VERIFY FAILED: {c.summary}")
        + f";  = {lp.cost_ratio(setting.label):.2f} x no ledger"
    )


def ledger_summary(lp: LedgerPhase) -> dict[str, Any]:
    summary: dict[str, Any] = {"in_flight": lp.in_flight, "rounds": len(lp.settings[0].runs)}
    for x in lp.settings:
        key = {"off": "off", "auto": "sqlite"}.get(x.ledger, "postgresql")
        summary[key] = _brief(x.median) | {"rounds_certs_per_s": [round(r.certs_per_s, 1) for r in x.runs]}
        if x.half is not None:
            summary[key] |= {"half_rate": _brief(x.half)}
        if x.check is not None:
            summary[key] |= {"records": x.check.entries, "verified": x.check.verified}
    summary["ratio_sqlite_to_off"] = round(lp.cost_ratio(LEDGER_SQLITE), 3)
    summary["ratio_sqlite_to_off_by_round"] = [round(x, 3) for x in lp.paired_ratios(LEDGER_SQLITE)]
    summary["ratio_postgresql_to_off"] = round(lp.cost_ratio(LEDGER_POSTGRES), 3)
    return summary


def run_all(s: Settings) -> tuple[Results | None, LedgerPhase | None]:
    with tempfile.TemporaryDirectory(prefix="meshca-bench-") as tmp:
        state_dir = Path(tmp) / "state"
        state_dir.mkdir(mode=0o700)
        with ServerFleet(state_dir, Path(tmp), s.ca_key_type, s.grpc_workers, s.grpc_server) as fleet:
            progress(f"generating {s.pool} EC P-256 keys + CSRs and {s.pool} dev tokens")
            pool = make_pool(state_dir, s.pool)
            if s.ledger_phase == "only":
                return None, measure_ledger(s, pool, state_dir, Path(tmp))
            fleet.pool_file = Path(tmp) / "pool.json"
            write_pool_file(fleet.pool_file, pool)
            progress("(a) in-process ceiling")
            ceiling = measure_ceiling(s, state_dir, pool)
            print_ceiling(ceiling, s)
            bench = Bench(s, pool, fleet)

            def start(cache: int, floor: bool = False) -> int:
                _, port = fleet.start(token_cache_size=cache, floor=floor)
                bench.root_pem = (state_dir / "root-cert.pem").read_bytes()
                return port

            def one_server(cache: int, name: str) -> tuple[LoadResult, LoadResult]:
                port = start(cache)
                peak = bench.peak(f"1 server, token cache {name}", port, cache)
                half = bench.run(
                    f"1 server, cache {name}, 50% peak", port, cache, total_rate=peak.certs_per_s / 2
                )
                fleet.stop_all()
                return peak, half

            peak_on, half_on = one_server(DEFAULT_CACHE, "on")
            peak_off, half_off = one_server(0, "off")
            port = start(0, floor=True)
            floor = bench.peak(FLOOR_LABEL, port, 0)
            fleet.stop_all()
            results = Results(ceiling, peak_on, half_on, peak_off, half_off, floor)
            ledger = None
            if s.ledger_phase == "run":
                ledger = measure_ledger(s, pool, state_dir, Path(tmp))
    return results, ledger


def report_ledger_only(s: Settings, lp: LedgerPhase, cores: int, elapsed_s: float) -> None:
    lines = report_ledger(s, lp)
    print("\nRatios")
    for name, value in lines:
        print(f"  {name:<50}{value:>6.2f}")
    print(f"  (benchmark wall time {elapsed_s:.0f} s)")
    summary = {
        "ca_key_type": s.ca_key_type,
        "cores": cores,
        "quick": s.quick,
        "duration_s": s.duration_s,
        "pool": s.pool,
        "ledger": ledger_summary(lp),
        "wall_s": round(elapsed_s, 1),
    }
    print(json.dumps(summary, separators=(",", ":")))


def report(s: Settings, res: Results, cores: int, elapsed_s: float, lp: LedgerPhase | None = None) -> None:
    c = res.ceiling
    requests = res.peak_on.certs_per_s * (s.duration_s + s.warmup_s)

    def b_note(r: LoadResult) -> str:
        if r is res.floor:
            return sweep_text(r)
        text = sweep_text(r) + f";  = {ratio(r.certs_per_s, c.certs_per_s):.2f} x ceiling"
        if r.token_cache:
            text += f" ({ratio(r.certs_per_s, c.no_token_certs_per_s):.2f} x cache-hit ceiling)"
        return text

    print_table(
        "(b) End to end through one `meshca serve --ledger off`: TLS + token check, closed loop at the peak",
        [res.peak_on, res.peak_off, res.floor],
        b_note,
    )
    print(
        "  transport floor: a server built like `meshca serve` (same TLS identity, thread pool, options)\n"
        "    whose handler returns a response issued in advance: the most grpcio + TLS + these clients\n"
        "    carry on this machine. srv CPU = cores used by the server process(es); ms/cert = server CPU\n"
        "    time per certificate (in-process the handler needs "
        f"{c.handler_cached_us / 1e3:.2f} ms with the cache, {c.handler_us / 1e3:.2f} without)"
    )
    print(
        f"  tokens: a pool of {s.pool} re-presented by the clients, each about "
        f"{requests / s.pool:.0f} times per cache-on phase (the cache-on server had seen them all "
        f"before its measured window)"
    )
    if 0.9 < ratio(res.peak_on.certs_per_s, res.peak_off.certs_per_s) < 1.1:
        print("  !! token cache on and off are within 10% of each other end to end")
    print_table(
        "(c) Open loop at 50% of each peak: fixed timetable, latency from the scheduled send time",
        [res.half_on, res.half_off],
        lambda r: f"sender lag at most {r.max_send_lag_ms:.1f} ms behind the timetable",
    )

    ledger_lines = report_ledger(s, lp) if lp is not None else []
    print("\nRatios")
    lines = [
        ("end to end / in-process ceiling, token cache on", ratio(res.peak_on.certs_per_s, c.certs_per_s)),
        ("  ... against the cache-hit ceiling", ratio(res.peak_on.certs_per_s, c.no_token_certs_per_s)),
        ("end to end / in-process ceiling, token cache off", ratio(res.peak_off.certs_per_s, c.certs_per_s)),
        ("token cache on / off, end to end", ratio(res.peak_on.certs_per_s, res.peak_off.certs_per_s)),
        ("end to end (cache on) / transport floor", ratio(res.peak_on.certs_per_s, res.floor.certs_per_s)),
        ("p99 at 50% peak / p99 at peak (cache on)", ratio(res.half_on.p99_ms, res.peak_on.p99_ms)),
        ("p99 at 50% peak / p99 at peak (cache off)", ratio(res.half_off.p99_ms, res.peak_off.p99_ms)),
        *ledger_lines,
    ]
    for name, value in lines:
        print(f"  {name:<50}{value:>6.2f}")
    print(f"  (benchmark wall time {elapsed_s:.0f} s)")

    summary: dict[str, Any] = {
        "ca_key_type": s.ca_key_type,
        "cores": cores,
        "quick": s.quick,
        "duration_s": s.duration_s,
        "pool": s.pool,
        "ceiling": {k: round(v, 1) for k, v in asdict(c).items() if isinstance(v, float)}
        | {"certs_per_s": round(c.certs_per_s), "cache_hit_certs_per_s": round(c.no_token_certs_per_s)},
        "e2e_cache_on": _brief(res.peak_on),
        "e2e_cache_off": _brief(res.peak_off),
        "half_peak_cache_on": _brief(res.half_on),
        "half_peak_cache_off": _brief(res.half_off),
        "transport_floor": _brief(res.floor),
        "ratio_e2e_cache_on_to_ceiling": round(ratio(res.peak_on.certs_per_s, c.certs_per_s), 3),
        "ratio_e2e_cache_off_to_ceiling": round(ratio(res.peak_off.certs_per_s, c.certs_per_s), 3),
        "wall_s": round(elapsed_s, 1),
    }
    if lp is not None:
        summary["ledger"] = ledger_summary(lp)
    print(json.dumps(summary, separators=(",", ":")))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", choices=["pinned", "shared"], default="pinned")
    chosen, rest = method.parse_known_args(args)
    if chosen.method == "pinned":
        import _bench_pinned

        print(f"meshca CA benchmark, pinned: {platform.machine()}, {versions()}", flush=True)
        return _bench_pinned.main(rest)
    return shared_main(rest)


def shared_main(argv: Sequence[str] | None = None) -> int:
    s = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    logging.getLogger("meshca").setLevel(logging.ERROR)  # in-process handler: as quiet as the servers
    started = time.perf_counter()
    cores = len(os.sched_getaffinity(0))
    levels = ",".join(map(str, s.levels))
    print(f"meshca CA benchmark: {cores} cores, {platform.machine()}, {versions()}")
    print(
        f"  CA key {s.ca_key_type}; pool of {s.pool} EC P-256 CSRs + {s.pool} RS256 dev tokens "
        f"(16 namespaces x 64 service accounts){'; QUICK smoke run' if s.quick else ''}"
    )
    print(
        f"  phases: {s.warmup_s:g}s warm-up + {s.duration_s:g}s measured; peak sweep over "
        f"{levels} in flight ({s.sweep_warmup_s:g}s + {s.sweep_s:g}s each)"
    )
    print(
        f"  clients: {s.clients} processes x {s.channels_per_client} TLS channels, sharing the "
        f"{cores} cores with the server(s); loopback, target name 'localhost'",
    )
    ledger_text = {
        "run": "(a)-(c) with --ledger off, then (d) the ledger's cost",
        "only": "only (d) the ledger's cost",
        "skip": "(a)-(c) with --ledger off; (d) skipped",
    }[s.ledger_phase]
    postgres = "PostgreSQL left out" if s.postgres is None else f"PostgreSQL ledger on {_redact(s.postgres)}"
    print(f"  ledger: {ledger_text}; {postgres}", flush=True)
    results, ledger = run_all(s)
    elapsed = time.perf_counter() - started
    if results is not None:
        report(s, results, cores, elapsed, ledger)
    elif ledger is not None:
        report_ledger_only(s, ledger, cores, elapsed)
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; servers and clients stopped", file=sys.stderr)
        sys.exit(130)
