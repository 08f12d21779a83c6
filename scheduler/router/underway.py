"""Prefixes the router sent to be computed or moved, and when it expects them valid.

Engines announce a prefill's blocks when they schedule it (vLLM caches a block's hash
as the step that computes it is scheduled; the simulator's engines announce a prefill
when it starts), and a decode worker's blocks are in the index once its transfer is
planned. So the prefix index cannot tell a block that is computed from one that is
still being computed or written, and a prefix pull of such blocks would wait for them
(:mod:`scheduler.router.pull` copies only valid ones). The router knows which prefixes
it sent where and its own estimate of when they land, and keeps that here until then:
per worker, each routed prompt's block chain, the blocks the worker held before (valid
already) and the time its new blocks are expected valid. :meth:`PrefixesUnderWay.valid`
answers how many of a worker's leading blocks of a chain are valid now.

Bounded: records expire at their expected time and each worker keeps at most
``per_worker`` of them (the oldest dropped first); a look-up reads one worker's records.
A worker's expired records go when it is looked up again, and at most every
:data:`SWEEP_S` one pass drops the workers whose records all expired (a worker that
left is never looked up again: without it their records would stay for good).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple


class _UnderWay(NamedTuple):
    ready_at: float
    hashes: Sequence[int]
    valid: int  # leading blocks the worker held before (not waited for)


#: Records kept per worker (more than the prefills one worker has in flight).
PER_WORKER = 256
#: Least seconds between two passes over the workers that drop those whose records
#: all expired (one pass is linear in the workers with records).
SWEEP_S = 60.0


class _Records(list[_UnderWay]):
    """One worker's records and the earliest and latest times one of them expires."""

    soonest: float = math.inf
    latest: float = -math.inf


class PrefixesUnderWay:
    """Per worker, the block chains routed to it whose new blocks are not valid yet."""

    def __init__(self, clock: Callable[[], float], per_worker: int = PER_WORKER) -> None:
        """Keep records against ``clock`` (seconds; the prefix index's clock)."""
        self.clock = clock
        self.per_worker = per_worker
        self._by_worker: dict[str, _Records] = {}
        self._sweep_at = clock() + SWEEP_S

    def __len__(self) -> int:
        """How many workers have records kept."""
        return len(self._by_worker)

    def add(self, worker: str, hashes: Sequence[int], valid: int, ready_in_s: float) -> None:
        """``worker`` computes (or receives) the blocks of ``hashes`` past its ``valid``
        leading ones, expected valid ``ready_in_s`` seconds from now."""
        if not ready_in_s > 0 or len(hashes) <= valid:
            return
        now = self.clock()
        if now >= self._sweep_at:
            self._sweep(now)
        records = self._live(worker, now)
        if records is None:
            records = self._by_worker[worker] = _Records()
        ready_at = now + ready_in_s
        records.append(_UnderWay(ready_at, hashes, valid))
        records.soonest = min(records.soonest, ready_at)
        records.latest = max(records.latest, ready_at)
        if len(records) > self.per_worker:
            del records[0]

    def valid(self, worker: str, hashes: Sequence[int], blocks: int) -> int:
        """How many of ``worker``'s first ``blocks`` blocks of ``hashes`` are valid now,
        as far as the routes recorded here tell (``blocks``: none is under way)."""
        records = self._live(worker, self.clock()) if worker in self._by_worker else None
        valid, length = blocks, len(hashes)
        for record in records or ():
            # a record holds back the blocks past its valid ones when the two chains
            # share its first block under way: chained hashes are equal at a position
            # only where the whole prefix up to it is, so one comparison tells
            first = record.valid
            if first < valid and first < length and record.hashes[first] == hashes[first]:
                valid = first
        return valid

    def _sweep(self, now: float) -> None:
        """Drop the workers whose records all expired by ``now``."""
        self._sweep_at = now + SWEEP_S
        for worker in [w for w, r in self._by_worker.items() if r.latest <= now]:
            del self._by_worker[worker]

    def _live(self, worker: str, now: float) -> _Records | None:
        """``worker``'s records, those expired by ``now`` dropped (None: it has none)."""
        records = self._by_worker.get(worker)
        if records is not None and records.soonest <= now:
            kept = [r for r in records if r.ready_at > now]
            if not kept:
                del self._by_worker[worker]
                return None
            records[:] = kept
            records.soonest = min(r.ready_at for r in kept)
        return records

