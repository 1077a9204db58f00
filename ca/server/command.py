"""`meshca serve` and `meshca token`: how each runs, from its parsed flags."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from ca.server.settings import serve_config, token_config


def run_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from ca.common import logs
    from ca.common.gc_tuning import tune_for_long_running_server
    from ca.common.malloc_tuning import map_large_blocks_apart
    from ca.common.signals import until_signalled

    cfg = serve_config(args, environ)
    logs.configure(cfg.log_level)
    if cfg.processes > 1:
        from ca.server.processes import supervise

        return supervise(cfg)
    from ca.server.wiring import build_server

    map_large_blocks_apart(environ)
    server = build_server(cfg)
    tune_for_long_running_server()
    server.start()
    return until_signalled(server.stop, server.wait)


def run_token(args: argparse.Namespace) -> int:
    from ca.common.clock import SystemClock
    from ca.server.devtoken import DevTokenIssuer
    from ca.server.state_dir import prepare

    cfg = token_config(args)
    issuer = DevTokenIssuer.load_or_create(prepare(cfg.state_dir), SystemClock())
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
