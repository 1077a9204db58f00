"""A progress bar for `meshca audit verify` and `export` on a terminal (rich).

Imported only once a long run has reported its first progress, so that short runs and
runs into pipes never import rich. Draws on the stream it is given (stderr) and leaves
stdout alone: the command's output stays byte for byte what it is without the bar.
"""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

REFRESHES_PER_SECOND = 4


class _Count(ProgressColumn):
    """1,234,567/2,000,000 entries"""

    def render(self, task: Task) -> Text:
        total = f"{task.total:,.0f}" if task.total is not None else "?"
        return Text(f"{task.completed:,.0f}/{total} entries", style="progress.download")


class _Rate(ProgressColumn):
    """12,345/s: over rich's recent samples, or while there are too few of them, since the bar
    started (a short run has only its first and last report)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:
            speed = (task.completed - task.fields["shown_from"]) / task.elapsed
        return Text(f"{speed:,.0f}/s" if speed else "?/s", style="progress.data.speed")


class ProgressBar:
    """One task's bar, drawn on `stream` until closed; the final state stays on the screen."""

    def __init__(self, description: str, stream: TextIO, done: int, total: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _Count(),
            _Rate(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
            refresh_per_second=REFRESHES_PER_SECOND,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID = self._progress.add_task(
            description, total=total, completed=done, shown_from=done
        )
        self._progress.start()

    def update(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        self._progress.stop()
