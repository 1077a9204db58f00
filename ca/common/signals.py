"""Running a long-lived command until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from types import FrameType

from ca.common import logs


def until_signalled(
    stop: Callable[[], None],
    wait: Callable[[], None],
    signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
) -> int:
    """Block until one of `signals` has stopped the service; the command's exit code.

    Only the first signal stops it: a worker of `meshca serve --processes N` may get its
    supervisor's SIGTERM as well as one sent to the whole process group."""

    def shutdown(signum: int, frame: FrameType | None) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_IGN)
        stop()

    for signum in signals:
        signal.signal(signum, shutdown)
    logs.running()
    wait()
    return 0
