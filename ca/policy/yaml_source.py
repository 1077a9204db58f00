"""PeerAuthentication manifests from a directory (or one file), reloaded when they change.

The directory is polled every 0.2 s on an APScheduler interval job: a change of
any file's (name, mtime, size, inode) re-reads that file, so edits, atomic
renames, new and deleted files take effect within a second. Files are read in
name order and a policy defined twice takes the last definition, as
`kubectl apply -f DIR` would leave it.

A file that fails to parse or validate is logged and counted, and its last good
policies stay in effect: a typo must not silently drop protection. At start,
where there is no last good version, an invalid file is an error. Deleting a
file removes its policies. If the directory itself disappears, the last good
set stays (a remount, not a decision to drop every policy).

Names starting with `.` are skipped, which also skips the `..data` links of a
mounted ConfigMap while following the per-key links to the current data.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler

from ca.errors import ConfigError, PolicyError
from ca.policy.manifest import declared_namespaces, load_json_manifests, load_manifests
from ca.policy.metrics import INVALID_POLICIES, POLICIES_LOADED
from ca.policy.model import InvalidPolicy, PeerAuthentication, PolicyRef
from ca.policy.policy_set import LoadedPolicies, PolicySet

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
SOURCE_LABEL = "yaml"


@dataclass(frozen=True)
class FileStamp:
    mtime_ns: int
    size: int
    inode: int


def _stamp(stat: os.stat_result) -> FileStamp:
    return FileStamp(stat.st_mtime_ns, stat.st_size, stat.st_ino)


def scan(path: Path) -> dict[Path, FileStamp]:
    """The manifest files at `path` (a directory or one file) with their stamps."""
    if not path.is_dir():
        return {path: _stamp(path.stat())}
    found: dict[Path, FileStamp] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
                continue
            try:
                if entry.is_file():  # follows symlinks, as ConfigMap mounts need
                    found[Path(entry.path)] = _stamp(entry.stat())
            except FileNotFoundError:
                continue  # removed between listing and stat
    return found


class InvalidFileError(PolicyError):
    """A policy file that cannot be read or does not validate; the message names the file."""

    def __init__(self, message: str, *, reason: str, namespaces: frozenset[str] | None) -> None:
        super().__init__(message, reason=reason)
        self.invalid = InvalidPolicy(message, namespaces)


def parse_file(file: Path) -> list[PeerAuthentication]:
    """The policies in one file; InvalidFileError names the file and the namespaces it declares."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidFileError(
            f"{file}: cannot be read ({err})", reason="unreadable_policy_file", namespaces=None
        ) from err
    json_text = file.suffix == ".json"
    try:
        return load_json_manifests(text) if json_text else load_manifests(text)
    except PolicyError as err:
        raise InvalidFileError(
            f"{file}: {err.message}",
            reason=err.reason,
            namespaces=declared_namespaces(text, json_text=json_text),
        ) from err


def merge(files: dict[Path, list[PeerAuthentication]]) -> list[PeerAuthentication]:
    """All files' policies; for a name defined twice, the last in file order wins."""
    merged: dict[PolicyRef, PeerAuthentication] = {}
    for file in sorted(files):
        for policy in files[file]:
            merged[policy.ref] = policy
    return list(merged.values())


def read_policies_once(path: Path) -> LoadedPolicies:
    """Every valid policy at `path` now; invalid files are reported, not fatal."""
    stamps = _initial_scan(path)
    good: dict[Path, list[PeerAuthentication]] = {}
    invalid: list[InvalidPolicy] = []
    for file in sorted(stamps):
        try:
            good[file] = parse_file(file)
        except InvalidFileError as err:
            invalid.append(err.invalid)
    return LoadedPolicies(tuple(merge(good)), invalid=tuple(invalid))


def _initial_scan(path: Path) -> dict[Path, FileStamp]:
    try:
        return scan(path)
    except OSError as err:
        raise ConfigError(
            f"cannot read policies from {path} ({err.strerror or err}); give an existing directory or "
            "file of PeerAuthentication manifests, or `kube`"
        ) from err


class YamlPolicySource:
    """Keeps a PolicySet equal to the manifests at `path`, polling for changes."""

    def __init__(
        self,
        path: Path,
        policy_set: PolicySet,
        *,
        scheduler: BaseScheduler | None = None,
        interval_s: float = 0.2,
    ) -> None:
        self.path = path
        self._policy_set = policy_set
        self._scheduler = scheduler
        self._own_scheduler = scheduler is None
        self._interval_s = interval_s
        self._job_id = f"policy-files-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._stamps: dict[Path, FileStamp] = {}
        self._good: dict[Path, list[PeerAuthentication]] = {}
        self._invalid: dict[Path, InvalidPolicy] = {}  # files whose current content is refused
        self._synced = threading.Event()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def start(self, wait_s: float = 10.0) -> None:
        """Loads the files now, then polls.

        Raises ConfigError if `path` cannot be read and PolicyError if a file is
        invalid: at start there is no last good version to fall back on, and
        running with less protection than written must not go unnoticed.
        """
        self._apply(_initial_scan(self.path))
        if self._invalid:
            raise PolicyError(
                "invalid PeerAuthentication manifests, fix them before starting: "
                + " | ".join(invalid.error for invalid in self._invalid.values())
            )
        self._synced.set()
        if self._scheduler is None:
            self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_job(
            self.poll,
            "interval",
            seconds=self._interval_s,
            id=self._job_id,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=5,
        )
        if self._own_scheduler:
            self._scheduler.start()

    def invalid_policies(self) -> tuple[InvalidPolicy, ...]:
        with self._lock:
            return tuple(self._invalid[file] for file in sorted(self._invalid))

    def stop(self) -> None:
        scheduler = self._scheduler
        if scheduler is None:
            return
        if self._own_scheduler:
            scheduler.shutdown(wait=True)
        elif scheduler.get_job(self._job_id) is not None:
            scheduler.remove_job(self._job_id)

    def poll(self) -> None:
        """One check for changes; never raises (it runs on the scheduler)."""
        try:
            stamps = scan(self.path)
        except OSError as err:
            log.warning(
                "cannot read the policy directory; keeping the last good policies",
                extra={"path": str(self.path), "error": str(err)},
            )
            return
        try:
            self._apply(stamps)
        except Exception:
            log.exception("reloading policies failed; keeping the last good policies")

    def _apply(self, stamps: dict[Path, FileStamp]) -> None:
        with self._lock:
            if stamps == self._stamps:
                return
            for file in set(self._good) - set(stamps):
                del self._good[file]
                log.info("policy file removed", extra={"file": str(file)})
            for file in set(self._invalid) - set(stamps):
                del self._invalid[file]
            settled = {file: stamp for file, stamp in stamps.items() if self._stamps.get(file) == stamp}
            for file in sorted(set(stamps) - set(settled)):
                if self._reload(file, stamps[file]):
                    settled[file] = stamps[file]
            self._stamps = settled
            policies = merge(self._good)
        changed = self._policy_set.replace(policies)  # subscribers have acted on it when it returns
        POLICIES_LOADED.labels(SOURCE_LABEL).set(len(policies))
        log.info("policy files read", extra={"policies": len(policies), "changed": changed})

    def _reload(self, file: Path, stamp: FileStamp) -> bool:
        """Re-reads one changed file; False if it changed again while being read (retry next poll)."""
        try:
            policies = parse_file(file)
        except InvalidFileError as err:
            if not self._still(file, stamp):
                return False
            INVALID_POLICIES.labels(SOURCE_LABEL).inc()
            self._invalid[file] = err.invalid
            kept = len(self._good.get(file, ()))
            log.error(
                "invalid policy file; keeping its last good policies",
                extra={"file": str(file), "error": err.message, "kept_policies": kept},
            )
            return True
        if not self._still(file, stamp):
            return False
        self._good[file] = policies
        self._invalid.pop(file, None)
        log.info("policy file loaded", extra={"file": str(file), "policies": len(policies)})
        return True

    @staticmethod
    def _still(file: Path, stamp: FileStamp) -> bool:
        try:
            return _stamp(file.stat()) == stamp
        except OSError:
            return False
