"""Running a long-lived command until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

from ca.common import logs


def until_signalled(stop: Callable[[], None], wait: Callable[[], None]) -> int:
    """Block until SIGTERM or SIGINT has stopped the service; the command's exit code."""

    def shutdown(signum: int, frame: FrameType | None) -> None:
        stop()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    logs.running()
    wait()
    return 0
