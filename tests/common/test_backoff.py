"""The one retry backoff: steps grow by a factor up to a cap, waits are jittered within a step."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ca.common.backoff import Backoff, Retrying

unit_randoms = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    initial_s = draw(st.floats(min_value=0.001, max_value=100.0))
    return Backoff(
        initial_s=initial_s,
        maximum_s=initial_s * draw(st.floats(min_value=1.0, max_value=1e6)),
        factor=draw(st.floats(min_value=1.0, max_value=10.0)),
        jitter=draw(st.floats(min_value=0.0, max_value=1.0)),
    )


attempts = st.integers(min_value=0, max_value=10_000)


@given(backoffs(), attempts, unit_randoms)
def test_a_wait_lies_in_the_jittered_share_of_its_step(backoff: Backoff, attempt: int, r: float) -> None:
    step = backoff.step_s(attempt)
    delay = backoff.delay_s(attempt, lambda: r)
    assert step * (1 - backoff.jitter) * (1 - 1e-12) <= delay <= step


@given(backoffs(), attempts)
def test_steps_start_at_the_initial_wait_and_never_pass_the_maximum(backoff: Backoff, attempt: int) -> None:
    assert backoff.step_s(0) == backoff.initial_s
    assert backoff.initial_s <= backoff.step_s(attempt) <= backoff.maximum_s


@given(backoffs(), st.integers(min_value=0, max_value=200))
def test_steps_grow_by_the_factor_until_capped(backoff: Backoff, attempt: int) -> None:
    expected = min(backoff.step_s(attempt) * backoff.factor, backoff.maximum_s)
    assert backoff.step_s(attempt + 1) == pytest.approx(expected, rel=1e-9)


def test_random_zero_gives_the_least_wait_and_one_the_whole_step() -> None:
    backoff = Backoff(initial_s=0.5, maximum_s=60.0, jitter=0.5)
    assert [backoff.delay_s(n, lambda: 1.0) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff.delay_s(n, lambda: 0.0) for n in range(4)] == [0.25, 0.5, 1.0, 2.0]
    assert backoff.delay_s(10**9, lambda: 1.0) == 60.0


def test_without_jitter_every_wait_is_the_step() -> None:
    backoff = Backoff(initial_s=0.2, maximum_s=10.0, jitter=0.0)
    assert [backoff.delay_s(n, lambda: 0.3) for n in range(8)] == pytest.approx(
        [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    )


@pytest.mark.parametrize(
    "figures",
    [
        {"initial_s": 0.0, "maximum_s": 1.0},
        {"initial_s": 2.0, "maximum_s": 1.0},
        {"initial_s": 1.0, "maximum_s": float("inf")},
        {"initial_s": 1.0, "maximum_s": 2.0, "factor": 0.5},
        {"initial_s": 1.0, "maximum_s": 2.0, "jitter": 1.5},
        {"initial_s": 1.0, "maximum_s": 2.0, "jitter": -0.1},
    ],
)
def test_unusable_figures_are_refused(figures: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="not a usable backoff"):
        Backoff(**figures)


@given(backoffs(), st.integers(min_value=0, max_value=50), unit_randoms)
def test_retrying_counts_failures_and_starts_over_after_a_reset(
    backoff: Backoff, failures: int, r: float
) -> None:
    retrying = Retrying(backoff, random=lambda: r)
    delays = [retrying.next_delay_s() for _ in range(failures)]
    assert delays == [backoff.delay_s(n, lambda: r) for n in range(failures)]
    assert retrying.attempt == failures
    retrying.reset()
    assert retrying.attempt == 0
    assert retrying.next_delay_s() == backoff.delay_s(0, lambda: r)
    assert retrying.attempt == 1


def test_retrying_draws_from_random_random_by_default() -> None:
    retrying = Retrying(Backoff(initial_s=1.0, maximum_s=1.0, jitter=1.0))
    delays = {retrying.next_delay_s() for _ in range(20)}
    assert len(delays) > 1 and all(0.0 <= d <= 1.0 for d in delays)
