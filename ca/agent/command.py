"""`meshca agent`: how it runs, from its parsed flags."""

from __future__ import annotations

import argparse

from ca.agent.settings import agent_config


def run(args: argparse.Namespace) -> int:
    import time

    from ca.agent.once import fetch_once
    from ca.agent.runner import build_agent
    from ca.common import logs
    from ca.common.signals import until_signalled

    cfg = agent_config(args)
    logs.configure(cfg.log_level)
    process = build_agent(cfg)
    if cfg.once:
        try:
            fetch_once(process.agent, timeout=cfg.once_timeout, clock=process.clock, sleep=time.sleep)
        finally:
            process.client.close()
        return 0
    process.start()
    return until_signalled(process.stop, process.wait)
