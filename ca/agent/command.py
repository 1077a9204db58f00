"""`meshca agent`: how it runs, from its parsed flags."""

from __future__ import annotations

import argparse
import gc
from typing import TYPE_CHECKING

from ca.agent.settings import AgentConfig, agent_config
from ca.common.gc_tuning import collecting_rarely

if TYPE_CHECKING:
    from ca.agent.runner import AgentProcess


def run(args: argparse.Namespace) -> int:
    # Starting, the agent imports and builds what it keeps until it exits; with --once on (an
    # init container, which its pod waits for) that is the whole run.
    with collecting_rarely():
        cfg = agent_config(args)
        if cfg.once:
            code = _fetch_once(cfg)
            # Exiting: leave what the run made out of the collections still to come (leaving the
            # block, and Python's own at exit), which would walk all of it and free nearly nothing.
            gc.freeze()
            return code
        process = _build(cfg)
    return _run_until_signalled(process)


def _build(cfg: AgentConfig) -> AgentProcess:
    from ca.agent.runner import build_agent
    from ca.common import logs

    logs.configure(cfg.log_level)
    return build_agent(cfg)


def _fetch_once(cfg: AgentConfig) -> int:
    import time

    from ca.agent.once import fetch_once

    process = _build(cfg)
    try:
        fetch_once(process.agent, timeout=cfg.once_timeout, clock=process.clock, sleep=time.sleep)
    finally:
        process.client.close()
    return 0


def _run_until_signalled(process: AgentProcess) -> int:
    from ca.common.signals import until_signalled

    process.start()
    return until_signalled(process.stop, process.wait)
