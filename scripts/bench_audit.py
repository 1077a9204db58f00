#!/usr/bin/env python3
"""Benchmark `meshca audit` over a large ledger: generate it, then time real commands.

Run from the project root with the project's virtualenv:

    .venv/bin/python scripts/bench_audit.py                  # 1,000,000 entries, about 2 minutes
    .venv/bin/python scripts/bench_audit.py --entries 100000 # smaller and quicker
    .venv/bin/python scripts/bench_audit.py --generate-only --state-dir /tmp/big  # a ledger to keep


It writes a SQLite ledger of realistic content (1,000 identities over 50 namespaces,
pods that change daily, 24h/1h/7d/90d certificates, about 4% refusals and a few CA
events, spread over 30 days) through `LedgerStore.append` in large batches, so the hash
chain is the real one; signs a checkpoint and the head file with a fresh ledger key;
then runs `meshca audit` commands as a user would (a new process each) and prints the
wall time of each, the best of three. The state directory is a temporary one, removed
at the end unless --keep is given; --state-dir names one to write to and keep instead
(`meshca audit verify --state-dir DIR` then checks that ledger, with its progress bar on
a terminal), and --generate-only stops once the ledger is written and signed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ca.common.clock import SystemClock  # noqa: E402
from ca.ledger.entries import ca_event_content, issued_content, refused_content  # noqa: E402
from ca.ledger.ledger import HEAD_FILE, HeadFile, Ledger, load_or_create_ledger_key  # noqa: E402
from ca.ledger.store import LedgerStore, sqlite_url  # noqa: E402

BATCH = 20_000
TTLS = ((timedelta(hours=24), 80), (timedelta(hours=1), 10), (timedelta(days=7), 7), (timedelta(days=90), 3))
REFUSALS = (
    ("token_expired", "UNAUTHENTICATED", "the token expired"),
    ("ttl_over_max", "INVALID_ARGUMENT", "requested TTL is over the maximum"),
    ("key_type_not_allowed", "INVALID_ARGUMENT", "the CSR's key type is not allowed"),
    ("pod_deleted", "UNAUTHENTICATED", "the token's pod no longer exists"),
)


def _identities(rng: random.Random) -> list[tuple[str, str]]:
    return [(f"ns-{n:02d}", f"sa-{s:02d}") for n in range(50) for s in range(20)]


def generate(path: Path, count: int, *, seed: int = 7) -> tuple[datetime, datetime]:
    """Write `count` entries ending about now; returns (first time, last time)."""
    rng = random.Random(seed)
    identities = _identities(rng)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(identities))]
    ttls = [ttl for ttl, _ in TTLS]
    ttl_weights = [weight for _, weight in TTLS]
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(days=30)
    step = (end - start) / count
    store = LedgerStore(sqlite_url(path))
    store.migrate()
    moment = start
    batch: list[dict[str, Any]] = []
    written = 0
    for index in range(count):
        moment += step
        if index % 100_000 == 0:
            batch.append(
                ca_event_content(
                    time=moment,
                    event="loaded" if index else "created",
                    ca_key_id="a1b2c3d4e5f60718",
                    ca_fingerprint="f" * 64,
                    source="/var/run/meshca/state",
                    not_after=start + timedelta(days=3650),
                )
            )
        else:
            ((namespace, account),) = rng.choices(identities, weights)
            day = (moment - start).days
            pod = f"{account}-{namespace[-2:]}{day:02d}-{rng.randrange(3)}"
            spiffe_id = f"spiffe://cluster.local/ns/{namespace}/sa/{account}"
            if rng.random() < 0.04:
                reason, status, message = rng.choice(REFUSALS)
                batch.append(
                    refused_content(
                        time=moment,
                        reason=reason,
                        status_code=status,
                        message=message,
                        client_address=f"ipv4:10.{rng.randrange(256)}.{rng.randrange(256)}.7:41234",
                        spiffe_id=spiffe_id,
                        namespace=namespace,
                        service_account=account,
                        pod_name=pod,
                    )
                )
            else:
                (ttl,) = rng.choices(ttls, ttl_weights)
                batch.append(
                    issued_content(
                        time=moment,
                        serial=rng.getrandbits(128) or 1,
                        spiffe_id=spiffe_id,
                        namespace=namespace,
                        service_account=account,
                        service_account_uid=f"uid-{namespace}-{account}",
                        pod_name=pod,
                        pod_uid=f"{rng.getrandbits(64):016x}",
                        node_name=f"node-{rng.randrange(40):02d}",
                        token_id=f"{rng.getrandbits(64):016x}",
                        auth_method="jwt",
                        cluster_id="Kubernetes",
                        client_address=f"ipv4:10.{rng.randrange(256)}.{rng.randrange(256)}.7:41234",
                        key_type="ec-p256" if rng.random() < 0.97 else "rsa-2048",
                        public_key_sha256=f"{rng.getrandbits(256):064x}",
                        certificate_sha256=f"{rng.getrandbits(256):064x}",
                        not_before=moment - timedelta(minutes=2),
                        not_after=moment + ttl,
                        ca_key_id="a1b2c3d4e5f60718",
                        ca_fingerprint="f" * 64,
                    )
                )
        if len(batch) >= BATCH:
            written += len(store.append(batch))
            batch = []
            print(f"\r  {written:,} entries", end="", file=sys.stderr, flush=True)
    if batch:
        written += len(store.append(batch))
    print(f"\r  {written:,} entries", file=sys.stderr)
    store.dispose()
    return start, end


def sign_head(state_dir: Path, path: Path) -> None:
    """A signed checkpoint in the database and the head file, as a running CA leaves them."""
    ledger = Ledger(
        LedgerStore(sqlite_url(path)),
        key=load_or_create_ledger_key(state_dir / "ledger-key.pem"),
        clock=SystemClock(),
        publishers=[HeadFile(state_dir / HEAD_FILE).publish],
    )
    ledger.close()


def timed(argv: list[str], repeat: int = 3) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        best = min(best, time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        out = done.stdout
    return best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    parser.add_argument("--state-dir", type=Path, help="write the ledger here (a new directory) and keep it")
    parser.add_argument(
        "--generate-only", action="store_true", help="write and sign the ledger, time nothing"
    )
    args = parser.parse_args()
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
        if (args.state_dir / "ledger.db").exists():
            raise SystemExit(f"{args.state_dir} already holds a ledger; name a new directory")
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="meshca-audit-bench-"))
    keep = args.keep or args.state_dir is not None
    try:
        db = state_dir / "ledger.db"
        started = time.perf_counter()
        print(f"generating {args.entries:,} ledger entries in {db}", file=sys.stderr)
        _, end = generate(db, args.entries)
        sign_head(state_dir, db)
        print(f"generated in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        if args.generate_only:
            return 0
        meshca = [sys.executable, "-m", "ca.cli", "audit"]
        common = ["--state-dir", str(state_dir)]
        day_ago = (end - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        week_ago = (end - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
        commands = {
            "list (no filter)": ["list"],
            "list --spiffe-id": ["list", "--spiffe-id", "spiffe://cluster.local/ns/ns-07/sa/sa-03"],
            "list --namespace --service-account --status issued": [
                "list",
                "--namespace",
                "ns-07",
                "--service-account",
                "sa-03",
                "--status",
                "issued",
            ],
            "list --namespace --since 1d": ["list", "--namespace", "ns-31", "--since", day_ago],
            "list --status refused --since 7d": ["list", "--status", "refused", "--since", week_ago],
            "list --valid-at now --namespace": ["list", "--valid-at", "now", "--namespace", "ns-12"],
            "list --pod": ["list", "--pod", "sa-03-0729-1"],
            "list --status ca_event": ["list", "--status", "ca_event"],
            "list --until 20d ago": ["list", "--until", (end - timedelta(days=20)).isoformat()],
        }
        results: dict[str, float] = {}
        for name, argv in commands.items():
            seconds, out = timed([*meshca, *argv, *common])
            results[name] = seconds
            print(f"{seconds * 1000:8.0f} ms  meshca audit {name}  ({max(0, out.count(chr(10)) - 1)} rows)")
        serial = _a_serial(db)
        seconds, _ = timed([*meshca, "show", serial, *common])
        print(f"{seconds * 1000:8.0f} ms  meshca audit show SERIAL")
        seconds, _ = timed([*meshca, "report", *common], repeat=1)
        print(f"{seconds * 1000:8.0f} ms  meshca audit report")
        seconds, _ = timed([*meshca, "export", "--since", day_ago, *common], repeat=1)
        print(f"{seconds * 1000:8.0f} ms  meshca audit export --since 1d")
        seconds, out = timed([*meshca, "verify", *common], repeat=1)
        print(f"{seconds * 1000:8.0f} ms  meshca audit verify: {out.strip()}")
        seconds, _ = timed([sys.executable, "-c", "import ca.cli.main"])
        print(f"{seconds * 1000:8.0f} ms  (Python start-up and import of ca.cli.main alone)")
    finally:
        if keep:
            print(f"kept {state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def _a_serial(db: Path) -> str:
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT serial FROM ledger_entries WHERE kind = 'issued' AND seq <= 123456 "
            "ORDER BY seq DESC LIMIT 1"
        ).fetchall()
    return str(rows[0][0])


if __name__ == "__main__":
    sys.exit(main())
