"""The screen the pty tests read must draw what a terminal would, or they assert on the wrong text."""

from __future__ import annotations

import sys

from tests.support.terminal import Screen, Terminal


def screen_of(data: str, rows: int = 4, columns: int = 10) -> list[str]:
    screen = Screen(rows, columns)
    screen.feed(data)
    return screen.lines()


def test_text_lines_and_carriage_returns() -> None:
    assert screen_of("ab\r\ncd\rX") == ["ab", "Xd", "", ""]


def test_a_full_line_wraps_only_when_more_follows() -> None:
    assert screen_of("0123456789") == ["0123456789", "", "", ""]
    assert screen_of("0123456789ab") == ["0123456789", "ab", "", ""]


def test_the_bottom_line_scrolls() -> None:
    assert screen_of("1\r\n2\r\n3\r\n4\r\n5", rows=3) == ["3", "4", "5"]
    assert screen_of("1\n2", rows=3) == ["1", " 2", ""]  # a line feed alone keeps the column


def test_cursor_moves_and_erasures() -> None:
    assert screen_of("aaaa\r\nbbbb\x1b[1A\x1b[2K\rcc") == ["cc", "bbbb", "", ""]
    assert screen_of("hello\x1b[3G\x1b[K") == ["he", "", "", ""]
    assert screen_of("x\x1b[2;4Hy") == ["x", "   y", "", ""]
    assert screen_of("abc\r\ndef\x1b[H\x1b[J") == ["", "", "", ""]


def test_colours_and_osc_strings_leave_no_text() -> None:
    assert screen_of("\x1b[1;31mred\x1b[0m \x1b]0;title\x07ok") == ["red ok", "", "", ""]


def test_the_alternate_screen_is_left_as_it_was_entered() -> None:
    assert screen_of("main\x1b[?1049h\x1b[Hview\x1b[?1049l!") == ["main!", "", "", ""]


def test_a_sequence_cut_between_reads_is_finished_by_the_next() -> None:
    screen = Screen(2, 10)
    screen.feed("ab\x1b[")
    screen.feed("2Kc")
    assert screen.lines() == ["  c", ""]


def test_a_command_on_a_pty_sees_a_terminal_of_the_given_size() -> None:
    code = "import os, sys; print(sys.stdout.isatty(), os.get_terminal_size())"
    term = Terminal([sys.executable, "-c", code], {}, rows=30, columns=90)
    try:
        assert term.wait(30) == 0
        assert "True os.terminal_size(columns=90, lines=30)" in term.text()
    finally:
        term.close()
