"""Which (prefill, decode) pairs a decode engine's NIXL transfers came from.

vLLM's NixlConnector counts transfers per engine (``vllm:nixl_xfer_time_seconds``,
``vllm:nixl_bytes_transferred``), not per peer. To label them by the pair's topology
tier, the routing side notes each disaggregated handoff it sends to a decode engine
(:meth:`HandoffLedger.note`); when a scrape shows ``n`` new transfers on that engine, the
``n`` oldest notes are taken (:meth:`HandoffLedger.take`), first in first out. Notes
older than ``max_age_s`` are dropped (the request never moved KV: it failed, or the
decode engine already held the prompt), and at most ``max_notes`` are kept per engine.
Transfers with no note left are *unattributed* (another router sent them) and counted
apart, never guessed into a tier.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Handoff:
    """One expected KV handoff: from ``prefill`` to the decode engine, on ``tier``."""

    prefill: str
    tier: str
    at: float
    #: Who routed it: ``gateway`` (it ran the legs) or ``route`` (``POST /v1/route``).
    via: str = "route"


@dataclass
class HandoffLedger:
    """Expected handoffs per decode engine, oldest first (see module docstring)."""

    max_age_s: float = 120.0
    max_notes: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _notes: dict[str, deque[Handoff]] = field(default_factory=dict)

    def note(self, decode: str, prefill: str, tier: str, via: str = "route") -> None:
        """A request was routed to hand KV from ``prefill`` to ``decode`` over ``tier``."""
        queue = self._notes.setdefault(decode, deque(maxlen=self.max_notes))
        queue.append(Handoff(prefill, tier, self.clock(), via))

    def take(self, decode: str, count: int) -> list[Handoff]:
        """Up to ``count`` of ``decode``'s oldest live notes (removed)."""
        queue = self._notes.get(decode)
        if not queue:
            return []
        horizon = self.clock() - self.max_age_s
        while queue and queue[0].at < horizon:
            queue.popleft()
        return [queue.popleft() for _ in range(min(count, len(queue)))]

    def forget(self, engine: str) -> None:
        """Drop the notes of an engine that went away."""
        self._notes.pop(engine, None)
