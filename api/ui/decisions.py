"""The newest routing results, kept for the operator's page at no cost to the route.

The route path hands :meth:`RecentDecisions.add` the :class:`Decision` (or
:class:`Unschedulable`) it has already built: one deque append, a clock read and two
integer updates — no copy, no serialisation, no lock (the service runs on one event
loop). The page's stream turns the newest ones into JSON only while a page is
connected (:func:`decision_view`). The ring is bounded twice: at most ``size``
results, and at most ``max_hashes`` block hashes held through them (a decision keeps
the hashes of the blocks it moves; 256 decisions of 65,536-block prompts would
otherwise keep ~0.7 GB alive). A few hundred small frozen models are all the garbage
collector sees of it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from scheduler.router.router import Decision, RouteResult

#: Results kept for the page (the list shows the newest 100).
RING_SIZE = 256
#: Block hashes the kept decisions may hold in all (~11 MB of ints); above, the oldest go.
MAX_HELD_HASHES = 1 << 18
#: Runners-up shown per decision.
RUNNERS_UP_SHOWN = 5


class RecentDecisions:
    """A bounded ring of (unix time, result) pairs, numbered in arrival order."""

    __slots__ = ("_held", "_ring", "added", "max_hashes", "size")

    def __init__(self, size: int = RING_SIZE, max_hashes: int = MAX_HELD_HASHES) -> None:
        self.size = size
        self.max_hashes = max_hashes
        #: Results ever added; the newest kept one is number ``added``.
        self.added = 0
        self._held = 0
        self._ring: deque[tuple[float, int, RouteResult]] = deque()

    def add(self, result: RouteResult) -> None:
        """Keep a reference to ``result`` (the route path calls this; keep it O(1))."""
        hashes = len(result.transfer.block_hashes) if type(result) is Decision else 0
        ring = self._ring
        ring.append((time.time(), hashes, result))
        self.added += 1
        self._held += hashes
        while len(ring) > self.size or self._held > self.max_hashes:
            self._held -= ring.popleft()[1]

    def __len__(self) -> int:
        return len(self._ring)

    def newest(self, after: int, limit: int) -> tuple[list[tuple[int, float, RouteResult]], int]:
        """Results numbered above ``after``, the newest ``limit`` of them, oldest first,
        and how many newer than ``after`` were not returned (dropped or over ``limit``)."""
        ring, added = self._ring, self.added
        wanted = max(0, added - after)
        count = min(wanted, len(ring), max(0, limit))
        first = added - count + 1
        picked = [(first + i, ring[len(ring) - count + i][0], ring[len(ring) - count + i][2])
                  for i in range(count)]
        return picked, wanted - count


def decision_view(seq: int, at: float, result: RouteResult) -> dict[str, Any]:
    """A result as the page shows it: the pair, why (the TTFT terms, the runners-up and
    their scores), what moves (blocks, bytes, tier, links); never the block hashes."""
    if type(result) is not Decision:
        return {"seq": seq, "at": at, "status": result.status, "request_id": result.request_id,
                "policy": result.policy, "reasons": list(getattr(result, "reasons", ()))}
    d = result
    return {
        "seq": seq, "at": at, "status": d.status, "request_id": d.request_id,
        "policy": d.policy, "mode": d.mode,
        "prefill": d.prefill.model_dump(), "decode": d.decode.model_dump(),
        "transfer": d.transfer.model_dump(exclude={"block_hashes"}),
        "estimate": d.estimate.model_dump(exclude={"links"}),
        "score": d.score, "considered": d.considered, "notes": list(d.notes),
        "runners_up": [r.model_dump() for r in d.runners_up[:RUNNERS_UP_SHOWN]],
        "decision_us": d.decision_us,
    }
