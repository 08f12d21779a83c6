"""The router's memory of prefixes under way: bounded as workers come and go."""

from __future__ import annotations

from scheduler.router.underway import SWEEP_S, PrefixesUnderWay


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_under_way_until_its_estimate_then_valid() -> None:
    clock = _Clock()
    under_way = PrefixesUnderWay(clock)
    under_way.add("w", (1, 2, 3, 4), 1, 2.0)
    assert under_way.valid("w", (1, 2, 3, 4), 4) == 1
    assert under_way.valid("w", (9, 8), 2) == 2  # another chain: not under way
    clock.now = 2.5
    assert under_way.valid("w", (1, 2, 3, 4), 4) == 4


def test_records_of_workers_never_looked_up_again_are_dropped() -> None:
    # workers that left (renamed pods, scaled down) are never looked up again: their
    # records must not stay for the life of the process
    clock = _Clock()
    under_way = PrefixesUnderWay(clock)
    for i in range(1000):
        under_way.add(f"gone-{i}", (1, 2, 3), 0, 1.0)
    assert len(under_way) == 1000
    clock.now = SWEEP_S + 1.0
    under_way.add("here", (1, 2, 3), 0, 1.0)
    assert len(under_way) == 1


def test_a_sweep_keeps_workers_with_records_still_under_way() -> None:
    clock = _Clock()
    under_way = PrefixesUnderWay(clock)
    under_way.add("slow", (1, 2, 3), 0, 2 * SWEEP_S)
    under_way.add("fast", (1, 2, 3), 0, 1.0)
    clock.now = SWEEP_S + 1.0
    under_way.add("here", (1, 2, 3), 0, 1.0)
    assert len(under_way) == 2
    assert under_way.valid("slow", (1, 2, 3), 3) == 0
