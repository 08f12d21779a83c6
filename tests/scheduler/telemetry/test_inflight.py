"""In-flight transfers per shared link: running totals, finished and overdue ones out."""

from __future__ import annotations

from scheduler.telemetry.inflight import InflightLinks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_totals_follow_adds_and_finishes() -> None:
    clock = Clock()
    links = InflightLinks(clock)
    links.add("a", ("leaf:1:up", "spine:0"), 100, not_after=110)
    links.add("b", ("leaf:1:up",), 50, not_after=120)
    links.add("a", ("leaf:1:up",), 999, not_after=130)  # the same plan twice counts once
    assert links.bytes_by_link() == {"leaf:1:up": 150, "spine:0": 100}
    assert links.transfers_by_link() == {"leaf:1:up": 2, "spine:0": 1}
    links.done("a")
    links.done("unknown")
    assert links.transfers_by_link() == {"leaf:1:up": 1}
    assert len(links) == 1


def test_transfers_past_their_deadline_drop_out() -> None:
    clock = Clock()
    links = InflightLinks(clock)
    links.add("a", ("nic:h0/mlx5_0",), 10, not_after=105)
    links.add("b", ("nic:h0/mlx5_0",), 20, not_after=200)
    clock.now = 106
    assert links.bytes_by_link() == {"nic:h0/mlx5_0": 20}
    links.done("b")
    assert links.bytes_by_link() == {} and len(links) == 0


def test_local_transfers_use_no_shared_link() -> None:
    links = InflightLinks(Clock())
    links.add("a", (), 10, not_after=200)
    assert links.transfers_by_link() == {} and len(links) == 0


def test_finished_plans_do_not_pile_up_in_the_deadline_heap() -> None:
    links = InflightLinks(Clock())
    for i in range(10_000):
        links.add(f"p{i}", ("l",), 1, not_after=1e9)
        links.done(f"p{i}")
    assert len(links._deadlines) < 200
