"""KV bytes in flight per shared link, for the metrics and the router's ``link_load``.

A replica adds each transfer it queues (its plan id, the shared links of its path, its
bytes and its deadline) and removes it when the transfer finishes. Running totals are
kept, so reading them costs one small dict copy, not a pass over every transfer.
Transfers whose report never comes (a sidecar died, the report reached another
replica) drop out at their deadline: the numbers can run high for at most that long,
never forever.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence

Clock = Callable[[], float]


class InflightLinks:
    """Transfers queued by this replica and not yet finished, summed per shared link."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._plans: dict[str, tuple[tuple[str, ...], int]] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap of (not_after, plan id)
        self._bytes: dict[str, int] = {}
        self._count: dict[str, int] = {}

    def add(self, plan_id: str, links: Sequence[str], nbytes: int, not_after: float) -> None:
        """Count a queued transfer on each shared link of its path until ``not_after``."""
        if plan_id in self._plans or not links:
            return
        self._expire()
        self._plans[plan_id] = (tuple(links), nbytes)
        heapq.heappush(self._deadlines, (not_after, plan_id))
        for link in links:
            self._bytes[link] = self._bytes.get(link, 0) + nbytes
            self._count[link] = self._count.get(link, 0) + 1

    def done(self, plan_id: str) -> None:
        """The transfer finished (or failed): stop counting it (unknown ids are ignored)."""
        found = self._plans.pop(plan_id, None)
        if found is None:
            return
        links, nbytes = found
        for link in links:
            self._bytes[link] -= nbytes
            self._count[link] -= 1
            if not self._count[link]:
                del self._bytes[link], self._count[link]

    def transfers_by_link(self) -> dict[str, int]:
        """Transfers in flight per link (the router's ``link_load``)."""
        self._expire()
        return dict(self._count)

    def bytes_by_link(self) -> dict[str, int]:
        """KV bytes in flight per link."""
        self._expire()
        return dict(self._bytes)

    def __len__(self) -> int:
        self._expire()
        return len(self._plans)

    def _expire(self) -> None:
        now, heap = self._clock(), self._deadlines
        while heap and heap[0][0] <= now:
            self.done(heapq.heappop(heap)[1])
        if len(heap) > 4 * len(self._plans) + 64:  # finished plans leave stale entries
            self._deadlines = [item for item in heap if item[1] in self._plans]
            heapq.heapify(self._deadlines)
