"""The gateway's learned prefix-pull overhead: a mean from 0, decaying while no pull
is observed, or pinned."""

from __future__ import annotations

import pytest

from api.gateway.pull_cost import ALPHA, HALF_LIFE_S, PullOverhead


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_overhead_is_a_mean_from_zero_of_observed_less_priced_time() -> None:
    applied: list[float] = []
    learned = PullOverhead(applied.append, clock=_Clock())
    assert applied == [0.0]  # the fabric-only price until a pull is observed
    learned.observe(0.105, 0.005)  # a cold first copy moves it a fifth of the way
    assert learned.seconds == pytest.approx(ALPHA * 0.1) and applied[-1] == learned.seconds
    learned.observe(0.001, 0.005)  # faster than its fabric price: a sample of 0
    assert learned.seconds == pytest.approx((1 - ALPHA) * ALPHA * 0.1)
    assert learned.samples == 2


def test_without_pulls_the_overhead_decays_so_that_pulls_are_tried_again() -> None:
    clock, applied = _Clock(), []
    learned = PullOverhead(applied.append, clock=clock)
    learned.observe(1.0, 0.0)
    clock.now += 0.5
    learned.refresh()  # within a second: nothing new put in force
    assert applied == [0.0, pytest.approx(ALPHA)]
    clock.now += HALF_LIFE_S - 0.5
    learned.refresh()
    assert applied[-1] == pytest.approx(ALPHA / 2) == learned.seconds


def test_a_pinned_overhead_is_neither_learned_nor_decayed() -> None:
    clock, applied = _Clock(), []
    pinned = PullOverhead(applied.append, pinned=0.3, clock=clock)
    pinned.observe(2.0, 0.0)
    clock.now += 10 * HALF_LIFE_S
    pinned.refresh()
    assert applied == [0.3] and pinned.seconds == 0.3
