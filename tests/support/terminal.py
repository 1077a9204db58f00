"""A command on a pseudo-terminal, and a small screen that reads what it draws.

`Screen` understands the part of VT100/xterm a full-screen `rich` view uses: printable text,
CR, LF, backspace, cursor movement and positioning, erasing lines and the display, the
alternate screen; colours, cursor visibility and OSC strings are read and dropped. `Terminal`
runs a command as the session leader of a new pty of a given size (so Ctrl-C typed into it
reaches the command as it would from a person), drains its output on a thread into the screen,
and waits for what the screen shows with a deadline.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import re
import select
import signal
import struct
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence

_CSI = re.compile(r"\x1b\[([?>=]?)([0-9;]*)([ -/]*)([@-~])")


class Screen:
    def __init__(self, rows: int, columns: int) -> None:
        self.rows = rows
        self.columns = columns
        self.grid = [[" "] * columns for _ in range(rows)]
        self.row = 0
        self.column = 0
        self._pending = ""
        self._saved: tuple[list[list[str]], int, int] | None = None  # the main screen, while in the alternate

    # ------------------------------------------------------------------ reading

    def lines(self) -> list[str]:
        return ["".join(cells).rstrip() for cells in self.grid]

    def text(self) -> str:
        return "\n".join(self.lines())

    # ------------------------------------------------------------------ writing

    def feed(self, data: str) -> None:
        data = self._pending + data
        self._pending = ""
        i = 0
        while i < len(data):
            char = data[i]
            if char == "\x1b":
                consumed = self._escape(data, i)
                if consumed == 0:  # an escape sequence cut by the read: finish it with the next one
                    self._pending = data[i:]
                    return
                i += consumed
                continue
            i += 1
            if char == "\r":
                self.column = 0
            elif char == "\n":
                self._line_feed()
            elif char == "\b":
                self.column = max(self.column - 1, 0)
            elif char == "\t":
                self.column = min((self.column // 8 + 1) * 8, self.columns - 1)
            elif char >= " ":
                self._put(char)

    def _put(self, char: str) -> None:
        if self.column >= self.columns:  # the pending wrap of a full line
            self.column = 0
            self._line_feed()
        self.grid[self.row][self.column] = char
        self.column += 1

    def _line_feed(self) -> None:
        if self.row == self.rows - 1:
            self.grid.pop(0)
            self.grid.append([" "] * self.columns)
        else:
            self.row += 1

    def _escape(self, data: str, start: int) -> int:
        """Characters consumed by the escape sequence at `start`; 0 if it is not complete yet."""
        if start + 1 >= len(data):
            return 0
        kind = data[start + 1]
        if kind == "[":
            match = _CSI.match(data, start)
            if match is None:
                return 0 if not re.search(r"[@-~]", data[start + 2 :]) else 2
            self._csi(match.group(1), match.group(2), match.group(4))
            return match.end() - start
        if kind == "]":  # OSC: up to BEL or ESC backslash
            for end, terminator in ((data.find("\x07", start), 1), (data.find("\x1b\\", start), 2)):
                if end != -1:
                    return end + terminator - start
            return 0
        if kind in "()":
            return 3 if start + 2 < len(data) else 0
        return 2  # ESC 7, ESC 8, ESC =, ...: nothing the screen's text depends on

    def _csi(self, private: str, params: str, final: str) -> None:
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []

        def arg(index: int, default: int) -> int:
            return numbers[index] if index < len(numbers) and numbers[index] else default

        if private == "?":
            if final in "hl" and any(n in (47, 1047, 1049) for n in numbers):
                self._switch_screen(alternate=final == "h")
            return
        if final == "A":
            self.row = max(self.row - arg(0, 1), 0)
        elif final == "B":
            self.row = min(self.row + arg(0, 1), self.rows - 1)
        elif final == "C":
            self.column = min(self.column + arg(0, 1), self.columns - 1)
        elif final == "D":
            self.column = max(self.column - arg(0, 1), 0)
        elif final == "G":
            self.column = min(arg(0, 1) - 1, self.columns - 1)
        elif final in "Hf":
            self.row = min(arg(0, 1) - 1, self.rows - 1)
            self.column = min(arg(1, 1) - 1, self.columns - 1)
        elif final == "J":
            self._erase_display(numbers[0] if numbers else 0)
        elif final == "K":
            self._erase_line(numbers[0] if numbers else 0)

    def _switch_screen(self, *, alternate: bool) -> None:
        """Into the alternate screen: the main one is kept and a blank one shown; out of it: the
        main one comes back as it was, cursor included."""
        if alternate and self._saved is None:
            self._saved = (self.grid, self.row, self.column)
            self.grid = [[" "] * self.columns for _ in range(self.rows)]
            self.row = self.column = 0
        elif not alternate and self._saved is not None:
            self.grid, self.row, self.column = self._saved
            self._saved = None

    def _erase_line(self, how: int) -> None:
        cells = self.grid[self.row]
        span = {0: range(self.column, self.columns), 1: range(0, self.column + 1)}.get(
            how, range(self.columns)
        )
        for column in span:
            if column < self.columns:
                cells[column] = " "

    def _erase_display(self, how: int) -> None:
        if how == 0:
            self._erase_line(0)
            rows = range(self.row + 1, self.rows)
        elif how == 1:
            self._erase_line(1)
            rows = range(0, self.row)
        else:
            rows = range(self.rows)
        for row in rows:
            self.grid[row] = [" "] * self.columns


class Terminal:
    """A command on its own pseudo-terminal; everything it writes goes through `screen`, and into
    `transcript` as it came."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        rows: int = 50,
        columns: int = 200,
        cwd: str | None = None,
    ) -> None:
        self.screen = Screen(rows, columns)
        self.transcript: list[str] = []
        self._lock = threading.Lock()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        pid = os.fork()
        if pid == 0:  # the child: session leader with the pty as its controlling terminal
            try:
                os.close(master)
                os.login_tty(slave)
                if cwd is not None:
                    os.chdir(cwd)
                os.execve(argv[0], list(argv), dict(env))
            finally:
                os._exit(127)
        os.close(slave)
        self.pid = pid
        self._master = master
        self._exit_status: int | None = None
        self._reader = threading.Thread(target=self._drain, name="pty-reader", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            try:
                ready, _, _ = select.select([self._master], [], [], 0.2)
                if not ready:
                    continue
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the child side is closed
                return
            if not chunk:
                return
            text = decoder.decode(chunk)
            with self._lock:
                self.transcript.append(text)
                self.screen.feed(text)

    def text(self) -> str:
        with self._lock:
            return self.screen.text()

    def output(self) -> str:
        with self._lock:
            return "".join(self.transcript)

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float, what: str) -> str:
        """Poll the screen until `predicate` holds for its text; AssertionError with the screen at
        the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.text()
            if predicate(screen):
                return screen
            if time.monotonic() >= deadline:
                raise AssertionError(f"not on screen within {timeout_s:.0f}s: {what}\n{screen}")
            if self.exited():
                raise AssertionError(
                    f"the command exited ({self._exit_status}) before: {what}\n{self.output()}"
                )
            time.sleep(0.1)

    def type(self, data: bytes) -> None:
        os.write(self._master, data)

    def exited(self) -> bool:
        if self._exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return False
            self._exit_status = os.waitstatus_to_exitcode(status)
        return True

    def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while not self.exited():
            if time.monotonic() >= deadline:
                raise AssertionError(f"the command did not exit within {timeout_s:.0f}s\n{self.text()}")
            time.sleep(0.05)
        assert self._exit_status is not None
        self._reader.join(2.0)
        return self._exit_status

    def close(self) -> None:
        """Kill the command if it still runs (a failed test), then close the pty."""
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self._reader.join(2.0)
        os.close(self._master)
