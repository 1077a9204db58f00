"""How `meshca ca` reaches a CA on the same state directory: request and answer files.

The CLI writes `<state-dir>/ca-requests/<id>.request.json`; the leading `meshca serve` takes it
within a second, makes (or refuses) the transition, and writes `<id>.answer.json`, which the
CLI reads and removes. The CA also writes `<state-dir>/ca-status.json` when it changes, and at
least every STATUS_REWRITE_S so that `meshca ca status` can tell a running CA's report from a
stale one. Every file is written atomically, so neither side reads half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ca.common.clock import Clock, SystemClock
from ca.common.files import atomic_write
from ca.errors import ConfigError, UnavailableError

log = logging.getLogger("meshca")

REQUESTS_DIR = "ca-requests"
STATUS_FILE = "ca-status.json"
REQUEST_SUFFIX = ".request.json"
ANSWER_SUFFIX = ".answer.json"
# While nothing in it changes, the status is rewritten this often (well within the CLI's
# freshness window, ca.server.ca_command.STATUS_FRESH_S); each write is two fsyncs, and the
# turn that writes it holds the GIL that the CA's request loop needs.
STATUS_REWRITE_S = 4.0
WRITTEN_AT = "written_at"  # the one field of the status that changes at every turn


@dataclass(frozen=True, kw_only=True)
class CaRequest:
    id: str
    action: str  # prepare, activate, retire, now
    requested_by: str
    force: bool = False
    dry_run: bool = False
    new_root: bool = False
    slot: str = ""  # for `now` after its first answer: the slot it follows


@dataclass(frozen=True, kw_only=True)
class CaAnswer:
    ok: bool
    done: bool  # for `now`: False while the new root waits for the agents
    lines: tuple[str, ...]
    reason: str = ""
    slot: str = ""  # for `now`: the slot it prepared or follows


class CaInbox:
    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / REQUESTS_DIR
        self._status = state_dir / STATUS_FILE

    @property
    def status_path(self) -> Path:
        return self._status

    # The CLI's side.

    def submit(self, request: CaRequest) -> None:
        self._dir.mkdir(mode=0o700, exist_ok=True)
        atomic_write(self._dir / f"{request.id}{REQUEST_SUFFIX}", json.dumps(asdict(request)).encode())

    def wait_answer(self, request_id: str, *, timeout_s: float, clock: Clock) -> CaAnswer:
        path = self._dir / f"{request_id}{ANSWER_SUFFIX}"
        deadline = clock.monotonic() + timeout_s
        while True:
            answer = _read_json(path)
            if answer is not None:
                path.unlink(missing_ok=True)
                return CaAnswer(
                    ok=bool(answer["ok"]),
                    done=bool(answer["done"]),
                    lines=tuple(answer["lines"]),
                    reason=str(answer.get("reason", "")),
                    slot=str(answer.get("slot", "")),
                )
            if clock.monotonic() >= deadline:
                with contextlib.suppress(FileNotFoundError):
                    (self._dir / f"{request_id}{REQUEST_SUFFIX}").unlink()
                raise UnavailableError(
                    f"no running CA answered within {timeout_s:g}s: start `meshca serve` on this "
                    "--state-dir (the leader takes requests within a second)",
                    reason="ca_not_running",
                )
            clock.sleep(0.1)

    def read_status(self) -> Mapping[str, Any] | None:
        return _read_json(self._status)

    # The CA's side.

    def pending(self) -> Iterator[CaRequest]:
        """The requests waiting, oldest first, each taken (removed) as it is read. A file that is
        not a request is removed with a warning, so that it cannot hold up the ones after it."""
        if not self._dir.is_dir():
            return
        for _, path in sorted(_with_mtime(self._dir.glob(f"*{REQUEST_SUFFIX}"))):
            try:
                data = _read_json(path)
            except ConfigError as err:
                data = {"unreadable": err.message}
            path.unlink(missing_ok=True)
            if data is None:
                continue  # taken away meanwhile (the CLI gave up waiting)
            try:
                yield CaRequest(**data)
            except TypeError:
                log.warning("ignored a file that is not a meshca ca request", extra={"path": str(path)})

    def answer(self, request_id: str, answer: CaAnswer) -> None:
        atomic_write(self._dir / f"{request_id}{ANSWER_SUFFIX}", json.dumps(asdict(answer)).encode())

    def write_status(self, status: Mapping[str, Any]) -> None:
        atomic_write(self._status, json.dumps(status, indent=2).encode())


class StatusHeartbeat:
    """Writes the CA's status through `inbox` when anything but its time changed, and at least
    every STATUS_REWRITE_S."""

    def __init__(self, inbox: CaInbox, clock: Clock | None = None) -> None:
        self._inbox = inbox
        self._clock = clock or SystemClock()
        self._written: dict[str, Any] | None = None
        self._written_at = 0.0

    def write(self, status: Mapping[str, Any]) -> bool:
        """True if it wrote `status`."""
        content = {key: value for key, value in status.items() if key != WRITTEN_AT}
        now = self._clock.monotonic()
        if content == self._written and now - self._written_at < STATUS_REWRITE_S:
            return False
        self._inbox.write_status(status)
        self._written, self._written_at = content, now
        return True


def _with_mtime(paths: Iterable[Path]) -> Iterator[tuple[float, Path]]:
    for path in paths:
        try:
            yield path.stat().st_mtime, path
        except FileNotFoundError:
            continue


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read ({err}); remove it and retry") from err
    return data if isinstance(data, dict) else None


def request_id() -> str:
    return os.urandom(6).hex()
