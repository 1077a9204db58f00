"""The `meshca` command."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from ca import logs, state_dir
from ca.clock import SystemClock
from ca.config import agent_config, audit_config, build_parser, environment, serve_config, token_config
from ca.devtoken import DevTokenIssuer
from ca.errors import ErrorKind, MeshcaError

EXIT_CONFIG = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def _until_signalled(stop: Callable[[], None], wait: Callable[[], None]) -> int:
    """Block until SIGTERM or SIGINT has stopped the service."""

    def shutdown(signum: int, frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    logs.running()
    wait()
    return 0


def _serve(args: object) -> int:
    from ca.app import build_server

    cfg = serve_config(args, environment())  # type: ignore[arg-type]
    logs.configure(cfg.log_level)
    server = build_server(cfg)
    server.start()
    return _until_signalled(server.stop, server.wait)


def _agent(args: object) -> int:
    from ca.agent.once import fetch_once
    from ca.agent.runner import build_agent

    cfg = agent_config(args)  # type: ignore[arg-type]
    logs.configure(cfg.log_level)
    process = build_agent(cfg)
    if cfg.once:
        try:
            fetch_once(process.agent, timeout=cfg.once_timeout, clock=process.clock, sleep=time.sleep)
        finally:
            process.client.close()
        return 0
    process.start()
    return _until_signalled(process.stop, process.wait)


def _token(args: object) -> int:
    cfg = token_config(args)  # type: ignore[arg-type]
    issuer = DevTokenIssuer.load_or_create(state_dir.prepare(cfg.state_dir), SystemClock())
    print(
        issuer.mint(
            namespace=cfg.namespace,
            service_account=cfg.service_account,
            audiences=cfg.audiences,
            ttl=cfg.ttl,
            pod_name=cfg.pod_name,
            pod_uid=cfg.pod_uid,
        )
    )
    return 0


def _audit(args: object) -> int:
    from ca.audit.command import run

    return run(audit_config(args, SystemClock().now()))  # type: ignore[arg-type]


def _policy(args: object) -> int:
    from ca.policy.command import run

    return run(args)  # type: ignore[arg-type]


def _enforce(args: object) -> int:
    from ca.enforce.command import run

    return run(args)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    commands = {
        "serve": _serve,
        "agent": _agent,
        "token": _token,
        "audit": _audit,
        "policy": _policy,
        "enforce": _enforce,
    }
    logs.quiet_grpc_core(os.environ)
    try:
        try:
            args = build_parser(environment()).parse_args(argv)
        except SystemExit as stop:
            return stop.code if isinstance(stop.code, int) else EXIT_CONFIG
        with logs.held_until_running():
            return commands[args.command](args)
    except MeshcaError as err:
        print(f"meshca: error: {err}", file=sys.stderr)
        return EXIT_CONFIG if err.kind is ErrorKind.CONFIG else EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
