"""The event queue: time order, ties in scheduling order, no travel into the past."""

from __future__ import annotations

from sim.clock import EventKind, EventQueue


def test_events_come_out_in_time_order_and_ties_keep_scheduling_order() -> None:
    queue = EventQueue()
    queue.schedule(2.0, EventKind.ARRIVAL, "late")
    queue.schedule(1.0, EventKind.ARRIVAL, "first-tie")
    queue.schedule(1.0, EventKind.RETRY, "second-tie")
    order = []
    while (event := queue.pop()) is not None:
        order.append((queue.now(), event[1]))
    assert order == [(1.0, "first-tie"), (1.0, "second-tie"), (2.0, "late")]
    assert queue.processed == 3


def test_an_event_in_the_past_runs_now() -> None:
    queue = EventQueue()
    queue.schedule(5.0, EventKind.ARRIVAL, "a")
    queue.pop()
    queue.schedule(1.0, EventKind.ARRIVAL, "b")
    assert queue.pop() == (EventKind.ARRIVAL, "b")
    assert queue.now() == 5.0


def test_empty_queue_returns_none() -> None:
    assert EventQueue().pop() is None
    assert len(EventQueue()) == 0
