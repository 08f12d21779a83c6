"""Confirmed (worker, block) entries: tier bitmasks per block, LRU order per worker.

* ``masks[tier]`` maps a block key to an ``int`` bitmask of the worker indices that
  hold it on that tier — what the prefix walk intersects;
* ``held[idx]`` is worker ``idx``'s ``OrderedDict`` key → ``stamp << 2 | tier bits``
  in least-recently-used-first order (stamps grow with every use);
* a heap of (oldest stamp, worker) finds the globally least recently used entry.

Eviction is **LRU by last use** (store or touch). A chain is stamped leaf first,
so its first block is the most recent and evictions take chain ends before the
prefixes they share, as vLLM's free-block queue does.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence

GPU = 1
HOST = 2
TIERS = (GPU, HOST)


class EntryTable:
    """The confirmed entries of every worker index, with tier masks and LRU eviction."""

    def __init__(self) -> None:
        """An empty table; worker slots are added with :meth:`ensure_slot`."""
        self.masks: dict[int, dict[int, int]] = {GPU: {}, HOST: {}}
        self.held: list[OrderedDict[int, int]] = []
        self.count = 0
        self.tier_count = {GPU: 0, HOST: 0}
        self.evicted_global = 0
        self.evicted_capacity = 0
        self._stamp = 0
        self._heap: list[tuple[int, int]] = []
        self._in_heap: list[bool] = []

    def ensure_slot(self, idx: int) -> None:
        """Make worker index ``idx`` usable (slots are reused after :meth:`clear`)."""
        while len(self.held) <= idx:
            self.held.append(OrderedDict())
            self._in_heap.append(False)

    def store(self, idx: int, keys: Sequence[int], tier: int) -> None:
        """Worker ``idx`` holds ``keys`` (chain order) on ``tier``; they count as just used."""
        held = self.held[idx]
        held_get = held.get
        masks = self.masks[tier]
        masks_get = masks.get
        bit = 1 << idx
        stamp = self._stamp
        added = tiered = 0
        for key in reversed(keys):
            value = held_get(key)
            if value is None:
                added += 1
                tiered += 1
                masks[key] = masks_get(key, 0) | bit
                held[key] = stamp << 2 | tier
            else:
                if not value & tier:
                    tiered += 1
                    masks[key] = masks_get(key, 0) | bit
                held[key] = stamp << 2 | (value & 3) | tier
                held.move_to_end(key)
            stamp += 1
        self._stamp = stamp
        self.count += added
        self.tier_count[tier] += tiered
        if held and not self._in_heap[idx]:
            heapq.heappush(self._heap, (next(iter(held.values())) >> 2, idx))
            self._in_heap[idx] = True

    def touch(self, idx: int, keys: Sequence[int]) -> int:
        """Refresh the LRU position of the ``keys`` worker ``idx`` holds; returns how many."""
        held = self.held[idx]
        stamp = self._stamp
        touched = 0
        for key in reversed(keys):
            value = held.get(key)
            if value is not None:
                held[key] = stamp << 2 | (value & 3)
                held.move_to_end(key)
                stamp += 1
                touched += 1
        self._stamp = stamp
        return touched

    def remove(self, idx: int, keys: Iterable[int], tier: int) -> None:
        """Worker ``idx`` no longer holds ``keys`` on ``tier`` (other tier kept)."""
        held = self.held[idx]
        for key in keys:
            value = held.get(key)
            if value is None or not value & tier:
                continue
            self._unmask(idx, key, tier)
            if value & 3 & ~tier:
                held[key] = value & ~tier
            else:
                del held[key]
                self.count -= 1

    def clear(self, idx: int) -> None:
        """Drop every entry of worker ``idx``."""
        held = self.held[idx]
        for key, value in held.items():
            self._drop_masks(idx, key, value)
        self.count -= len(held)
        held.clear()

    def enforce(self, idx: int, capacity: int | None, max_entries: int | None) -> None:
        """Evict until worker ``idx`` fits ``capacity`` and the table ``max_entries``."""
        held = self.held[idx]
        if capacity is not None:
            while len(held) > capacity:
                key, value = held.popitem(last=False)
                self._drop_masks(idx, key, value)
                self.count -= 1
                self.evicted_capacity += 1
        if max_entries is not None and self.count > max_entries:
            self._evict_global(max_entries)

    def _evict_global(self, limit: int) -> None:
        """Drop globally least recently used entries until at most ``limit`` remain.

        The heap holds one (stamp, worker) per worker with entries; a stamp may be
        older than that worker's real oldest entry (touched or evicted since), in
        which case it is refreshed and pushed back.
        """
        while self.count > limit and self._heap:
            stamp, idx = heapq.heappop(self._heap)
            held = self.held[idx]
            if not held:
                self._in_heap[idx] = False
                continue
            key, value = next(iter(held.items()))
            if value >> 2 != stamp:
                heapq.heappush(self._heap, (value >> 2, idx))
                continue
            held.popitem(last=False)
            self._drop_masks(idx, key, value)
            self.count -= 1
            self.evicted_global += 1
            if held:
                heapq.heappush(self._heap, (next(iter(held.values())) >> 2, idx))
            else:
                self._in_heap[idx] = False

    def _unmask(self, idx: int, key: int, tier: int) -> None:
        masks = self.masks[tier]
        mask = masks[key] & ~(1 << idx)
        if mask:
            masks[key] = mask
        else:
            del masks[key]
        self.tier_count[tier] -= 1

    def _drop_masks(self, idx: int, key: int, value: int) -> None:
        for tier in TIERS:
            if value & tier:
                self._unmask(idx, key, tier)
