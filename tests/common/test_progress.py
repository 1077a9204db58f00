"""The progress ticker: reports every N items and once at the end, never twice for one count."""

from __future__ import annotations

import pytest

from ca.common.progress import Ticker


def _run(items: int, every: int, total: int | None = None) -> list[tuple[int, int]]:
    heard: list[tuple[int, int]] = []
    ticker = Ticker(lambda done, of: heard.append((done, of)), items if total is None else total, every)
    done = 0
    for _ in range(items):
        done += 1
        if done >= ticker.next_at:
            ticker.tick(done)
    ticker.finish(done)
    return heard


@pytest.mark.parametrize(
    ("items", "every", "expected"),
    [
        (10, 4, [(4, 10), (8, 10), (10, 10)]),
        (12, 4, [(4, 12), (8, 12), (12, 12)]),  # the last tick is the end: not reported twice
        (3, 10, [(3, 3)]),
        (0, 10, [(0, 0)]),
    ],
)
def test_reports_every_n_and_at_the_end(items: int, every: int, expected: list[tuple[int, int]]) -> None:
    assert _run(items, every) == expected


def test_a_total_passed_grows_with_the_work() -> None:
    assert _run(7, 3, total=5) == [(3, 5), (6, 6), (7, 7)]


def test_without_a_callback_nothing_is_due() -> None:
    ticker = Ticker(None, 10)
    assert ticker.next_at > 10**15
    ticker.finish(10)  # no callback to call: no error


def test_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        Ticker(None, 10, every=0)
