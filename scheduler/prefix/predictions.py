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
from itertools import repeat


class PredictionTable:
    """Predicted (key, worker-index) entries with deadlines, as per-key worker bitmasks."""

    def __init__(self, max_entries: int) -> None:
        """Hold at most ``max_entries`` live predicted entries."""
        #: key → bitmask of worker indices predicted to hold it (read by the match walk).
        self.masks: dict[int, int] = {}
        #: worker index → key → deadline (per worker: no (key, worker) tuple per entry).
        self._deadline: dict[int, dict[int, float]] = {}
        self._live = 0
        self._batches: list[tuple[float, int, int, tuple[int, ...]]] = []
        self._counter = 0
        self._max = max_entries
        self.made = 0
        self.confirmed = 0
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        """Number of live predicted entries."""
        return self._live

    def add(self, idx: int, keys: Iterable[int], deadline: float) -> int:
        """Predict that worker ``idx`` holds ``keys`` until ``deadline``; returns how many."""
        bit = 1 << idx
        added = tuple(keys)
        if not added:
            return 0
        masks, get = self.masks, self.masks.get
        for key in added:  # the per-key loop of every routed request: locals only
            masks[key] = get(key, 0) | bit
        own = self._deadline.get(idx)
        if own is None:
            own = self._deadline[idx] = {}
        before = len(own)
        own.update(zip(added, repeat(deadline)))
        self._live += len(own) - before
        heapq.heappush(self._batches, (deadline, self._counter, idx, added))
        self._counter += 1
        self.made += len(added)
        while self._live > self._max and self._batches:
            self.evicted += self._pop_batch()
        return len(added)

    def expire(self, now: float) -> None:
        """Drop every entry whose deadline is at or before ``now``."""
        while self._batches and self._batches[0][0] <= now:
            self.expired += self._pop_batch()

    def confirm(self, idx: int, keys: Iterable[int]) -> None:
        """An engine event stored ``keys`` on worker ``idx``: the guesses became facts."""
        if not self._live:
            return
        for key in keys:
            self.confirmed += self._drop(key, idx)

    def discard(self, idx: int, keys: Iterable[int]) -> None:
        """Forget predictions of ``keys`` on worker ``idx`` (e.g. the engine removed them)."""
        if not self._live:
            return
        for key in keys:
            self._drop(key, idx)

    def drop_worker(self, idx: int) -> None:
        """Forget every prediction of worker ``idx``."""
        for key in list(self._deadline.get(idx, ())):
            self._drop(key, idx)

    def keys_of(self, idx: int) -> frozenset[int]:
        """The keys currently predicted for worker ``idx``."""
        return frozenset(self._deadline.get(idx, ()))

    def _pop_batch(self) -> int:
        deadline, _, idx, keys = heapq.heappop(self._batches)
        own = self._deadline.get(idx)
        if not own:
            return 0
        dropped = 0
        masks, clear = self.masks, ~(1 << idx)
        for key in keys:
            # A later prediction of the same pair moved its deadline: that batch owns it.
            # (_drop inlined: this runs for every key of every batch that expires.)
            if own.get(key) == deadline:
                del own[key]
                mask = masks[key] & clear
                if mask:
                    masks[key] = mask
                else:
                    del masks[key]
                dropped += 1
        self._live -= dropped
        return dropped

    def _drop(self, key: int, idx: int) -> int:
        own = self._deadline.get(idx)
        if own is None or own.pop(key, None) is None:
            return 0
        self._live -= 1
        mask = self.masks[key] & ~(1 << idx)
        if mask:
            self.masks[key] = mask
        else:
            del self.masks[key]
        return 1
