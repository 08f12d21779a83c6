"""The simulator's clock: a deterministic event queue over simulated seconds.

Events at the same instant run in the order they were scheduled (a running sequence
number breaks ties), so one seed always gives one history. The queue's :meth:`now`
is the clock injected into everything that reads time (the prefix index's TTLs).
"""

from __future__ import annotations

import heapq
from enum import IntEnum
from typing import Any


class EventKind(IntEnum):
    """What happens at an event; the simulator dispatches on it."""

    ARRIVAL = 0
    RETRY = 1
    STEP_END = 2
    EPOCH_END = 3
    FLOW_DONE = 4
    KV_ARRIVED = 5
    PULL_ARRIVED = 6


class EventQueue:
    """A heap of ``(time, sequence, kind, payload)`` events and the current time."""

    def __init__(self, start_s: float = 0.0) -> None:
        """Start the clock at ``start_s`` seconds with no events."""
        self._heap: list[tuple[float, int, EventKind, Any]] = []
        self._seq = 0
        self._now = start_s
        self.processed = 0

    def now(self) -> float:
        """The simulated time in seconds (the time of the event being handled)."""
        return self._now

    def schedule(self, at_s: float, kind: EventKind, payload: Any = None) -> None:
        """Add an event; one scheduled in the past runs at the current time."""
        self._seq += 1
        heapq.heappush(self._heap, (max(at_s, self._now), self._seq, kind, payload))

    def pop(self) -> tuple[EventKind, Any] | None:
        """Advance the clock to the next event and return it (``None``: no events)."""
        if not self._heap:
            return None
        at, _, kind, payload = heapq.heappop(self._heap)
        self._now = at
        self.processed += 1
        return kind, payload

    def __len__(self) -> int:
        """Events still waiting."""
        return len(self._heap)
