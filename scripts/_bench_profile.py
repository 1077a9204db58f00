"""Where the pinned server's CPU goes: perf by library, py-spy by Python function.

Two views of the same load, taken one after the other:

- `perf record -e cpu-clock` on the server's core (Debian's linux-perf), grouped by the
  process and the shared object each sample fell in: grpc's core (HTTP/2, TLS in its
  BoringSSL, the Cython glue: its symbols are stripped, so these stay one figure), the
  cryptography extension (Rust and the OpenSSL linked into it), the Python interpreter
  (every line of Python), protobuf, SQLite, libc and the kernel (syscalls, loopback TCP).
- `py-spy record` (non-blocking) of the server and its children, each sample charged to
  its innermost Python frame, then grouped by what that code does. Time in C called from
  Python (a signature, a PEM encoding) is charged to the Python line that called it.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

DSO_GROUPS = (
    ("cygrpc", "gRPC core: HTTP/2, TLS (BoringSSL), Cython glue"),
    ("_rust.abi3", "cryptography: Rust + its OpenSSL"),
    ("libpython", "Python interpreter (all Python code)"),
    ("python3", "Python interpreter (all Python code)"),
    ("_message", "protobuf (upb)"),
    ("sqlite", "SQLite"),
    ("kernel", "kernel: syscalls, loopback TCP, scheduling"),
    ("libc", "libc: malloc, memcpy, locks"),
    ("libcrypto", "OpenSSL (hashlib, ssl module)"),
)

# First match wins, checked against the innermost Python frame "function (file:line)".
FRAME_GROUPS = (
    (r"ca/auth/|[(/]jwt/", "token: parse + signature + claims (ca/auth)"),
    (r"ca/issuance/csr", "CSR: load, verify, key policy (ca/issuance/csr)"),
    (r"ca/issuance/", "leaf: build, sign, PEM, chain (ca/issuance)"),
    (r"[(/]cryptography/", "cryptography's Python layer (x509 objects)"),
    (r"ca/ledger/|[(/]sqlalchemy/|sqlite3", "ledger: records, hashing, SQL (ca/ledger, SQLAlchemy)"),
    (r"multiprocessing/|pickle", "ledger hand-off between processes (pipe, pickle)"),
    (r"[(/]google/protobuf/|_pb2", "protobuf (Python side)"),
    (r"prometheus_client|ca/server/metrics", "metrics (prometheus_client)"),
    (r"logging/|ca/common/log", "logging"),
    (r"[(/]grpc/", "gRPC Python/aio layer (incl. C it calls)"),
    (r"asyncio/|selectors|_asynciomodule", "asyncio scheduling (incl. gRPC work run from the loop)"),
    (r"ca/server/", "request handler (ca/server)"),
    (r"ca/", "other meshca code"),
    (r"threading|queue|concurrent/", "threads and queues (incl. C run by a thread: gRPC polling)"),
)


@dataclass(frozen=True)
class Share:
    name: str
    samples: int
    fraction: float


def _shares(counts: collections.Counter[str]) -> list[Share]:
    total = sum(counts.values()) or 1
    return [Share(name, n, n / total) for name, n in counts.most_common()]


# --------------------------------------------------------------------------- perf


def perf_available() -> bool:
    return shutil.which("perf") is not None


def record_perf(cpu: int, seconds: float, out: Path) -> None:
    subprocess.run(
        [
            *("perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-C", str(cpu), "-o", str(out)),
            *("--", "sleep", f"{seconds:g}"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def perf_by_dso(out: Path, tids: Iterable[int]) -> tuple[list[Share], int]:
    """Shares of the listed threads' samples by library group, and those threads' sample count.

    perf's `pid` sort key is the thread id, so pass every thread of the processes wanted."""
    report = subprocess.run(
        ["perf", "report", "-i", str(out), "--stdio", "--sort", "pid,dso", "-F", "sample,pid,dso"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    wanted = {str(t) for t in tids}
    counts: collections.Counter[str] = collections.Counter()
    for line in report.splitlines():
        match = re.match(r"\s*(\d+)\s+(\d+):\S*\s+(\S.*?)\s*$", line)
        if match is None or match.group(2) not in wanted:
            continue
        counts[_dso_group(match.group(3))] += int(match.group(1))
    return _shares(counts), sum(counts.values())


def _dso_group(dso: str) -> str:
    for needle, name in DSO_GROUPS:
        if needle in dso:
            return name
    return f"other: {dso}"


# --------------------------------------------------------------------------- py-spy


def record_pyspy(pid: int, seconds: float, out: Path) -> None:
    spy = Path(sys.executable).with_name("py-spy")
    subprocess.run(
        [
            *(str(spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--rate", "200"),
            *("--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(out)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def read_folded(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


def _innermost_python(frames: Sequence[str]) -> str:
    for frame in reversed(frames):
        if re.search(r"\(.*\.py:\d+\)$", frame):
            return frame
    return frames[-1]


def _charged_frame(frames: Sequence[str], leaf: str) -> str:
    """Work inside cryptography is charged to the meshca code that asked for it."""
    if not re.search(r"[(/]cryptography/", leaf):
        return leaf
    for frame in reversed(frames):
        if re.search(r"\(ca/", frame):
            return frame
    return leaf


def _frame_group(frame: str) -> str:
    for pattern, name in FRAME_GROUPS:
        if re.search(pattern, frame):
            return name
    return "other"


def pyspy_breakdown(path: Path, main_pid: int) -> tuple[list[Share], list[Share], list[Share]]:
    """(groups, top innermost frames, processes) by share of samples."""
    groups: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    processes: collections.Counter[str] = collections.Counter()
    for stack, count in read_folded(path):
        # py-spy nests a child's samples under its parent's "process" frame.
        owners = [i for i, frame in enumerate(stack) if frame.startswith("process ")]
        process = stack[owners[-1]] if owners else ""
        body = stack[owners[-1] + 1 :] if owners else stack
        if not body:
            continue
        leaf = _innermost_python(body)
        groups[_frame_group(_charged_frame(body, leaf))] += count
        frames[re.sub(r":\d+\)$", ")", leaf)] += count
        processes[_process_label(process, main_pid)] += count
    return _shares(groups), _shares(frames), _shares(processes)


def _process_label(process: str, main_pid: int) -> str:
    if process.startswith(f"process {main_pid}:"):
        return "meshca serve (main process)"
    return "child process (the ledger writer)"


def print_shares(title: str, shares: Sequence[Share], limit: int = 30) -> None:
    print(title)
    for share in shares[:limit]:
        print(f"  {share.fraction * 100:5.1f}%  {share.name}")
