"""`meshca serve --processes N`: N worker processes on one port, one state directory and one
ledger, under a supervisor.

Each worker is a whole CA server (its own gRPC server, event loop, token cache and ledger
process) started from the supervisor's settings (`worker_config`). What they share:

- the gRPC ports (--listen, --renew-listen): every worker binds them with SO_REUSEPORT, the only
  case where meshca sets it, and the kernel spreads new connections over the workers (a
  connection stays with the worker that accepted it). Worker 0 binds first; if a port was 0, the
  others are given the port it got;
- the state directory: the CA keyring (saved with compare-and-swap under a file lock), the
  development token signer, the ledger key and the head file;
- the ledger: each worker's ledger process appends under the head row's lock, so the chain
  stays one chain.

What is each worker's own: its metrics endpoint (--metrics-listen port P gives worker k port
P + k; port 0 gives each a free port), its counters and token cache. The SPIFFE bundle endpoint
and the injection webhook are served by worker 0 alone.

Leadership (CA slot transitions, ledger checkpoints and compaction, answering `meshca ca`): with
a cluster, the Lease as between replicas; without one, the worker holding the lock on
`<state-dir>/leader.lock` (`ca.server.leader_lock`), which another takes over when it dies.

The supervisor starts worker 0 and waits until it serves (so that the first start's state
directory, CA keyring and ledger schema are made by one process), then the others; it writes the
ports file once all serve (the shared ports, worker 0's own under their usual names, and
`workers`: each serving worker's number, pid and ports). A worker that exits is started again
after a backoff; SIGTERM or SIGINT stops every worker. If a worker cannot start the first time,
the others are stopped and the supervisor exits with that worker's code.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import random
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from ca.common import logs
from ca.common.backoff import Backoff, Retrying
from ca.common.clock import Clock, SystemClock
from ca.errors import ErrorKind, MeshcaError
from ca.net.listening import check_free, remove_ports_file, split_address, write_ports_file
from ca.server.settings import ServeConfig

log = logging.getLogger("meshca")

RESTART_BACKOFF = Backoff(initial_s=0.5, maximum_s=30.0)
STABLE_S = 60.0  # a worker that served this long before it exited restarts from the first step
STOP_GRACE_S = 20.0  # after SIGTERM, how long a worker has to stop before it is killed
EXIT_CONFIG, EXIT_FAILURE = 2, 1  # as `meshca` exits on a MeshcaError


@dataclass(frozen=True)
class SharedPorts:
    """The gRPC ports worker 0 bound, which the others bind too."""

    grpc: int
    renew: int | None = None


def worker_config(cfg: ServeConfig, slot: int, shared: SharedPorts | None) -> ServeConfig:
    """The settings of worker `slot` (0 to N-1) of `cfg`; `shared` once worker 0 has bound the
    gRPC ports (None: worker 0's first start, on the ports as given)."""
    return replace(
        cfg,
        listen=cfg.listen if shared is None else _on_port(cfg.listen, shared.grpc),
        renew_listen=(
            cfg.renew_listen
            if shared is None or cfg.renew_listen is None or shared.renew is None
            else _on_port(cfg.renew_listen, shared.renew)
        ),
        metrics_listen=_metrics_address(cfg.metrics_listen, slot),
        bundle_listen=cfg.bundle_listen if slot == 0 else None,
        webhook_listen=cfg.webhook_listen if slot == 0 else None,
        ports_file=None,  # the worker sends its ports to the supervisor, which writes the file
        replica="",  # named in the worker, after its own pid
        processes=1,
        shares_port=True,
    )


def _on_port(address: str, port: int) -> str:
    host, _ = split_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _metrics_address(address: str | None, slot: int) -> str | None:
    if address is None:
        return None
    _, port = split_address(address)
    return address if port == 0 else _on_port(address, port + slot)


def ports_document(
    first: Mapping[str, int], serving: Sequence[tuple[int, int, Mapping[str, int]]]
) -> dict[str, object]:
    """The supervisor's ports file: worker 0's ports (the shared gRPC ports and its own) under the
    names a single process writes, and `workers`, one {slot, pid, ports...} per serving worker."""
    workers = [{"slot": slot, "pid": pid, **ports} for slot, pid, ports in sorted(serving)]
    return {**first, "workers": workers}


@dataclass
class Worker:
    slot: int
    process: BaseProcess
    ready: Connection | None  # the worker sends its ports on it once it serves; then None
    started_at: float
    ports: dict[str, int] | None = None  # once serving

    @property
    def exit_code(self) -> int:
        """What the supervisor exits with when this worker could not start."""
        code = self.process.exitcode
        return code if code is not None and code > 0 else EXIT_FAILURE


@dataclass
class Supervisor:
    """See the module's description; `run()` returns the command's exit code."""

    cfg: ServeConfig
    clock: Clock = field(default_factory=SystemClock)
    backoff: Backoff = RESTART_BACKOFF
    rng: random.Random = field(default_factory=random.Random)
    _context: multiprocessing.context.SpawnContext = field(
        default_factory=lambda: multiprocessing.get_context("spawn")
    )
    _workers: dict[int, Worker] = field(default_factory=dict)
    _restarts: dict[int, float] = field(default_factory=dict)  # slot -> when to start it again
    _retrying: dict[int, Retrying] = field(default_factory=dict)
    _shared: SharedPorts | None = None
    _first_ports: dict[str, int] = field(default_factory=dict)
    _stopping: bool = False
    _wake: tuple[int, int] = (-1, -1)

    def run(self) -> int:
        self._wake = os.pipe()
        os.set_blocking(self._wake[1], False)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        remove_ports_file(self.cfg.ports_file)
        try:
            check_free("--listen", self.cfg.listen)
            if self.cfg.renew_listen is not None:
                check_free("--renew-listen", self.cfg.renew_listen)
            failed = self._start_all()
            if failed is not None:
                return failed
            logs.running()
            self._supervise()
            return 0
        finally:
            self._stop_all()
            remove_ports_file(self.cfg.ports_file)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for fd in self._wake:
                os.close(fd)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake[1], b"x")

    # Starting.

    def _start_all(self) -> int | None:
        """Worker 0, then the others once it serves; an exit code if one could not start."""
        first = self._spawn(0)
        failed = self._await_serving([first])
        if failed is not None or self._stopping:
            return failed
        assert first.ports is not None
        self._shared = SharedPorts(grpc=first.ports["grpc"], renew=first.ports.get("renew"))
        failed = self._await_serving([self._spawn(slot) for slot in range(1, self.cfg.processes)])
        if failed is not None or self._stopping:
            return failed
        self._write_ports_file()
        log.info(
            "meshca CA serving in worker processes",
            extra={"processes": self.cfg.processes, "ports": self._first_ports, "supervisor": os.getpid()},
        )
        return None

    def _await_serving(self, starting: list[Worker]) -> int | None:
        """Wait until every worker of `starting` serves; the exit code of one that exits first."""
        waiting = list(starting)
        while waiting and not self._stopping:
            ready = self._wait(waiting, timeout_s=None)
            for worker in waiting[:]:
                if worker.ready in ready and self._take_ports(worker):
                    waiting.remove(worker)
                elif worker.ready is None and worker.process.sentinel in ready:
                    worker.process.join()
                    log.error(
                        "a worker process could not start; stopping the others",
                        extra={"slot": worker.slot, "exit_code": worker.process.exitcode},
                    )
                    return worker.exit_code
        return None

    def _spawn(self, slot: int) -> Worker:
        ready, ready_in_child = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(worker_config(self.cfg, slot, self._shared), ready_in_child, os.getpid()),
            name=f"meshca-worker-{slot}",
        )
        process.start()
        ready_in_child.close()
        worker = Worker(slot=slot, process=process, ready=ready, started_at=self.clock.monotonic())
        self._workers[slot] = worker
        return worker

    def _take_ports(self, worker: Worker) -> bool:
        """Read the ports the worker sent once serving; False if it exited without sending."""
        assert worker.ready is not None
        try:
            ports: dict[str, int] = worker.ready.recv()
        except (EOFError, OSError):
            ports = {}
        worker.ready.close()
        worker.ready = None
        if not ports:
            return False
        worker.ports = ports
        if worker.slot == 0:
            self._first_ports = dict(ports)
        log.info(
            "worker process serving", extra={"slot": worker.slot, "pid": worker.process.pid, "ports": ports}
        )
        return True

    # Running.

    def _supervise(self) -> None:
        while not self._stopping:
            ready = self._wait(list(self._workers.values()), timeout_s=self._next_restart_in())
            if self._stopping:
                return
            for worker in list(self._workers.values()):
                if worker.ready is not None and worker.ready in ready:
                    if self._take_ports(worker):
                        self._write_ports_file()
                elif worker.process.sentinel in ready:
                    self._exited(worker)
            self._restart_due()

    def _exited(self, worker: Worker) -> None:
        worker.process.join()
        del self._workers[worker.slot]
        retrying = self._retrying.setdefault(worker.slot, Retrying(self.backoff, self.rng.random))
        if worker.ports is not None and self.clock.monotonic() - worker.started_at >= STABLE_S:
            retrying.reset()
        delay_s = retrying.next_delay_s()
        self._restarts[worker.slot] = self.clock.monotonic() + delay_s
        log.warning(
            "a worker process exited; starting it again",
            extra={
                "slot": worker.slot,
                "pid": worker.process.pid,
                "exit_code": worker.process.exitcode,
                "restart_in_s": round(delay_s, 2),
            },
        )
        if worker.ports is not None:
            self._write_ports_file()

    def _next_restart_in(self) -> float | None:
        if not self._restarts:
            return None
        return max(0.0, min(self._restarts.values()) - self.clock.monotonic())

    def _restart_due(self) -> None:
        now = self.clock.monotonic()
        for slot, due in sorted(self._restarts.items()):
            if due <= now:
                del self._restarts[slot]
                self._spawn(slot)

    def _wait(self, workers: Sequence[Worker], timeout_s: float | None) -> list[object]:
        watched: list[object] = [self._wake[0]]
        for worker in workers:
            watched.append(worker.process.sentinel)
            if worker.ready is not None:
                watched.append(worker.ready)
        ready = wait(watched, timeout_s)  # type: ignore[arg-type]
        if self._wake[0] in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake[0], 64)
        return list(ready)

    def _write_ports_file(self) -> None:
        serving = [
            (w.slot, w.process.pid or 0, w.ports) for w in self._workers.values() if w.ports is not None
        ]
        write_ports_file(self.cfg.ports_file, ports_document(self._first_ports, serving))

    # Stopping.

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for them to stop, kill any that has not within the grace."""
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = self.clock.monotonic() + STOP_GRACE_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - self.clock.monotonic()))
            if worker.process.is_alive():
                log.warning("a worker process did not stop in time; killing it", extra={"slot": worker.slot})
                worker.process.kill()
                worker.process.join()
            if worker.ready is not None:
                worker.ready.close()
        self._workers.clear()


def supervise(cfg: ServeConfig) -> int:
    """`meshca serve --processes N` (N > 1): the supervisor's exit code."""
    return Supervisor(cfg).run()


# The worker's side.


def worker_main(cfg: ServeConfig, ready: Connection, supervisor_pid: int) -> None:
    """A worker process: serve `cfg`, send the bound ports on `ready`, run until SIGTERM.

    Ctrl-C reaches the whole process group: the supervisor answers it with SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(supervisor_pid)
    sys.exit(_serve(cfg, ready))


def _serve(cfg: ServeConfig, ready: Connection) -> int:
    from ca.common.flags import environment
    from ca.common.gc_tuning import tune_for_long_running_server
    from ca.common.malloc_tuning import map_large_blocks_apart
    from ca.common.signals import until_signalled
    from ca.server.wiring import build_server

    logs.configure(cfg.log_level)
    map_large_blocks_apart(environment())
    try:
        with logs.held_until_running():
            server = build_server(cfg)
            tune_for_long_running_server()
            server.start()
            ready.send(dict(server.ports))
            ready.close()
            return until_signalled(server.stop, server.wait, signals=(signal.SIGTERM,))
    except MeshcaError as err:
        print(f"meshca: error: {err}", file=sys.stderr)
        return EXIT_CONFIG if err.kind is ErrorKind.CONFIG else EXIT_FAILURE


def _die_with(supervisor_pid: int) -> None:
    """SIGTERM this worker if the supervisor dies without stopping it (killed with SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != supervisor_pid:  # it died before the line above
        sys.exit(EXIT_FAILURE)
