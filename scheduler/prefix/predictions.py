"""Short-lived predicted entries: "worker w will hold block b", until confirmed or expired.

A router that sends a request to a worker knows that worker will cache the
request's blocks a few hundred milliseconds before the engine's first event says
so; engines without KV events never say so. Predicted entries fill that gap. They
live in their own table so that confirmed state is never polluted by a guess.

Bounded two ways: each entry expires at its deadline (``ttl_s`` after it was made),
and at most ``max_entries`` live at once — past that the batches that expire first
are dropped first (oldest-first, as every batch has a TTL from its creation).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class PredictionTable:
    """Predicted (key, worker-index) entries with deadlines, as per-key worker bitmasks."""

    def __init__(self, max_entries: int) -> None:
        """Hold at most ``max_entries`` live predicted entries."""
        #: key → bitmask of worker indices predicted to hold it (read by the match walk).
        self.masks: dict[int, int] = {}
        self._deadline: dict[tuple[int, int], float] = {}
        self._batches: list[tuple[float, int, int, tuple[int, ...]]] = []
        self._counter = 0
        self._max = max_entries
        self.made = 0
        self.confirmed = 0
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        """Number of live predicted entries."""
        return len(self._deadline)

    def add(self, idx: int, keys: Iterable[int], deadline: float) -> int:
        """Predict that worker ``idx`` holds ``keys`` until ``deadline``; returns how many."""
        bit = 1 << idx
        added: list[int] = []
        for key in keys:
            self.masks[key] = self.masks.get(key, 0) | bit
            self._deadline[(key, idx)] = deadline
            added.append(key)
        if added:
            heapq.heappush(self._batches, (deadline, self._counter, idx, tuple(added)))
            self._counter += 1
            self.made += len(added)
        while len(self._deadline) > self._max and self._batches:
            self.evicted += self._pop_batch()
        return len(added)

    def expire(self, now: float) -> None:
        """Drop every entry whose deadline is at or before ``now``."""
        while self._batches and self._batches[0][0] <= now:
            self.expired += self._pop_batch()

    def confirm(self, idx: int, keys: Iterable[int]) -> None:
        """An engine event stored ``keys`` on worker ``idx``: the guesses became facts."""
        if not self._deadline:
            return
        for key in keys:
            self.confirmed += self._drop(key, idx)

    def discard(self, idx: int, keys: Iterable[int]) -> None:
        """Forget predictions of ``keys`` on worker ``idx`` (e.g. the engine removed them)."""
        if not self._deadline:
            return
        for key in keys:
            self._drop(key, idx)

    def drop_worker(self, idx: int) -> None:
        """Forget every prediction of worker ``idx``."""
        for key, owner in [pair for pair in self._deadline if pair[1] == idx]:
            self._drop(key, owner)

    def keys_of(self, idx: int) -> frozenset[int]:
        """The keys currently predicted for worker ``idx``."""
        return frozenset(key for key, owner in self._deadline if owner == idx)

    def _pop_batch(self) -> int:
        deadline, _, idx, keys = heapq.heappop(self._batches)
        dropped = 0
        for key in keys:
            # A later prediction of the same pair moved its deadline: that batch owns it.
            if self._deadline.get((key, idx)) == deadline:
                dropped += self._drop(key, idx)
        return dropped

    def _drop(self, key: int, idx: int) -> int:
        if self._deadline.pop((key, idx), None) is None:
            return 0
        mask = self.masks[key] & ~(1 << idx)
        if mask:
            self.masks[key] = mask
        else:
            del self.masks[key]
        return 1
