"""Confirmed (worker, block) entries: tier bitmasks per block, LRU order per worker.

* ``masks[tier]`` maps a block key to an ``int`` bitmask of the worker indices that
  hold it on that tier — what the prefix walk intersects, and the only record of
  tiers;
* every store or touch of worker ``idx`` is one *use record* ``(stamps, keys)``:
  the keys in use order and their stamps (a ``range`` — stamps grow with every
  use, so the smallest is the least recently used);
* ``held[idx]`` maps each key worker ``idx`` holds to the record of its latest
  use (one shared tuple per store, so an entry costs a dict slot, not an object);
* the worker's *use log* lists its records oldest first. Walking it from the
  front finds the least recently used entry without sorting: a key whose
  ``held`` value is no longer that record was used again (or removed) since.
  Records are compacted once stale uses outnumber the live entries;
* a heap of (oldest stamp, worker) finds the globally least recently used entry.

Eviction is **LRU by last use** (store or touch). A chain is stamped leaf first,
so its first block is the most recent and evictions take chain ends before the
prefixes they share, as vLLM's free-block queue does.

Speed and size (measured in ``bench/results/prefix_index.md``; instruction counts by
callgrind in docs/dev-notes.md). Per block, a store costs one insert into the
worker's ``held`` dict (a plain loop: cheaper than ``zip``/``fromkeys`` bulk forms at
~15 keys) and one ``setdefault`` pass over the tier's masks through ``map`` (a fresh
block gets the worker's own bit object); a removal one ``pop`` pass over the masks
and one over ``held``. Nothing is allocated per block: the use record is shared by
the event's keys, the constant arguments come from endless ``repeat`` iterators
made once, and a block held by another worker is merged in a second pass only
when the first pass saw one. Per-key decisions (a key on both tiers) take a plain
loop.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import compress, repeat
from operator import and_, is_, not_, or_

GPU = 1
HOST = 2
TIERS = (GPU, HOST)

#: (stamps, keys): the stamps of one use of ``keys`` (same length, use order).
Record = tuple[Sequence[int], Sequence[int]]


#: Runs an iterator to its end in C (``map`` used for its side effects). One shared
#: zero-length deque: building ``deque(it, maxlen=0)`` per call parses keywords.
_drain: Callable[[Iterable[object]], None] = deque[object](maxlen=0).extend
#: Endless constant iterators, shared: ``map(f, keys, _NONES)`` calls ``f(key, None)``
#: (``map`` stops with ``keys``; a ``repeat`` without a count never runs out).
_NONES = repeat(None)
_ZEROS = repeat(0)


class _UseLog:
    """One worker's use records, oldest first, with a read position."""

    __slots__ = ("logged", "offset", "records")

    def __init__(self) -> None:
        self.records: deque[Record] = deque()
        self.offset = 0  # position in records[0] of the next use to look at
        self.logged = 0  # uses in the records from the read position on

    def append(self, record: Record) -> None:
        self.records.append(record)
        self.logged += len(record[1])

    def oldest(self, held: dict[int, Record]) -> tuple[int, int] | None:
        """(key, stamp) of the least recently used entry of ``held``, skipping stale uses."""
        records = self.records
        while records:
            stamps, keys = record = records[0]
            get = held.get
            for offset in range(self.offset, len(keys)):
                key = keys[offset]
                if get(key) is record:
                    self.logged -= offset - self.offset
                    self.offset = offset
                    return key, stamps[offset]
            self.logged -= len(keys) - self.offset
            records.popleft()
            self.offset = 0
        return None

    def compact(self, held: dict[int, Record]) -> None:
        """Drop stale uses once they outnumber the live entries (amortised O(1) per use)."""
        if self.logged <= 2 * len(held) + 64:
            return
        kept: deque[Record] = deque()
        first = True
        for record in self.records:
            stamps, keys = record
            if first:
                stamps, keys, first = stamps[self.offset:], keys[self.offset:], False
            live = list(map(is_, map(held.get, keys), repeat(record)))
            if not any(live):
                continue
            fresh = (list(compress(stamps, live)), list(compress(keys, live)))
            held.update(zip(fresh[1], repeat(fresh), strict=False))
            kept.append(fresh)
        self.records = kept
        self.offset = 0
        self.logged = sum(len(keys) for _, keys in kept)

    def clear(self) -> None:
        self.records.clear()
        self.offset = 0
        self.logged = 0


class EntryTable:
    """The confirmed entries of every worker index, with tier masks and LRU eviction."""

    def __init__(self) -> None:
        """An empty table; worker slots are added with :meth:`ensure_slot`."""
        self.masks: dict[int, dict[int, int]] = {GPU: {}, HOST: {}}
        self.held: list[dict[int, Record]] = []
        self.count = 0
        self.evicted_global = 0
        self.evicted_capacity = 0
        self._logs: list[_UseLog] = []
        self._bits: list[int] = []
        self._bit_iters: list[repeat[int]] = []  # endless repeat(bit) per worker
        self._stamp = 0
        self._heap: list[tuple[int, int]] = []
        self._in_heap: list[bool] = []

    def ensure_slot(self, idx: int) -> None:
        """Make worker index ``idx`` usable (slots are reused after :meth:`clear`)."""
        while len(self.held) <= idx:
            self._bits.append(1 << len(self.held))
            self._bit_iters.append(repeat(self._bits[-1]))
            self.held.append({})
            self._logs.append(_UseLog())
            self._in_heap.append(False)

    def tiers_of(self, idx: int, key: int) -> int:
        """Tier bits (GPU | HOST) worker ``idx`` holds ``key`` on (0: not held)."""
        return (self.masks[GPU].get(key, 0) >> idx & 1) | (
            (self.masks[HOST].get(key, 0) >> idx & 1) << 1)

    def tier_count(self, tier: int) -> int:
        """(worker, block) pairs on ``tier`` (O(blocks); for statistics)."""
        return sum(map(int.bit_count, self.masks[tier].values()))

    def store(self, idx: int, keys: Sequence[int], tier: int) -> None:
        """Worker ``idx`` holds ``keys`` (chain order) on ``tier``; they count as just used."""
        n = len(keys)
        if not n:
            return
        held = self.held[idx]
        rkeys = keys[::-1] if type(keys) in (tuple, list) else list(reversed(keys))
        base = self._stamp
        self._stamp = base + n
        record: Record = (range(base, base + n), rkeys)
        before = len(held)
        for key in rkeys:  # cheaper than any C-level bulk form (zip, fromkeys) for ~15 keys
            held[key] = record
        added = len(held) - before
        if added != n and len(set(rkeys)) != n:
            record = self._dedupe(held, rkeys, base)
        self.count += added
        masks = self.masks[tier]
        bit = self._bits[idx]
        # One pass: a fresh block gets the worker's own bit object; if any block was
        # already held by another worker, its old mask comes back and is or-ed in.
        olds = list(map(masks.setdefault, rkeys, self._bit_iters[idx]))
        if olds.count(bit) != n:
            masks.update(zip(rkeys, map(or_, olds, self._bit_iters[idx]), strict=False))
        log = self._logs[idx]
        log.records.append(record)
        log.logged += n
        if log.logged > 2 * len(held) + 64:
            log.compact(held)
        if not self._in_heap[idx]:
            heapq.heappush(self._heap, (record[0][0], idx))
            self._in_heap[idx] = True

    @staticmethod
    def _dedupe(held: dict[int, Record], rkeys: Sequence[int], base: int) -> Record:
        """A key used twice in one event counts at its last use (as separate stamps would)."""
        last = {key: i for i, key in enumerate(rkeys)}
        order = sorted(last.values())
        record: Record = ([base + i for i in order], [rkeys[i] for i in order])
        held.update(zip(record[1], repeat(record), strict=False))
        return record

    def touch(self, idx: int, keys: Sequence[int]) -> int:
        """Refresh the LRU position of the ``keys`` worker ``idx`` holds; returns how many."""
        held = self.held[idx]
        rkeys = keys[::-1] if isinstance(keys, list | tuple) else list(reversed(keys))
        hits = list(compress(rkeys, map(held.__contains__, rkeys)))
        if not hits:
            return 0
        n = len(hits)
        base = self._stamp
        self._stamp = base + n
        record: Record = (range(base, base + n), hits)
        held.update(zip(hits, repeat(record, n), strict=False))
        if len(set(hits)) != n:
            record = self._dedupe(held, hits, base)
        log = self._logs[idx]
        log.append(record)
        log.compact(held)
        return n

    def remove(self, idx: int, keys: Sequence[int], tier: int) -> None:
        """Worker ``idx`` no longer holds ``keys`` on ``tier`` (other tier kept)."""
        other = self.masks[HOST if tier == GPU else GPU]
        masks = self.masks[tier]
        bit = self._bits[idx]
        held = self.held[idx]
        before = len(held)
        olds = list(map(masks.pop, keys, _ZEROS))
        if not other and olds.count(bit) == len(olds):
            # Common case: each key held by this worker alone, on this tier alone.
            _drain(map(held.pop, keys, _NONES))
            self.count -= before - len(held)
            return
        # Put back what was popped (a key listed twice popped 0 the second time).
        masks.update([(key, old) for key, old in zip(keys, olds, strict=True) if old])
        on_tier = list(compress(keys, map(and_, olds, repeat(bit))))
        if not on_tier:
            return
        # Keys also on the other tier stay held (on that tier).
        gone = [key for key in on_tier if not other.get(key, 0) & bit] if other else on_tier
        _drain(map(held.pop, gone, repeat(None)))
        self.count -= before - len(held)
        self._unmask_many(idx, on_tier, tier)

    def clear(self, idx: int) -> None:
        """Drop every entry of worker ``idx``."""
        held = self.held[idx]
        keys = list(held)
        for tier in TIERS:
            if self.masks[tier]:
                self._unmask_many(idx, keys, tier)
        self.count -= len(held)
        held.clear()
        self._logs[idx].clear()

    def enforce(self, idx: int, capacity: int | None, max_entries: int | None) -> None:
        """Evict until worker ``idx`` fits ``capacity`` and the table ``max_entries``."""
        held = self.held[idx]
        if capacity is not None and len(held) > capacity:
            log = self._logs[idx]
            while len(held) > capacity:
                oldest = log.oldest(held)
                if oldest is None:  # cannot happen: every held key has a live use
                    raise AssertionError("prefix index use log lost a live entry")
                self._drop(idx, oldest[0])
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
            oldest = self._logs[idx].oldest(held)
            if oldest is None:
                self._in_heap[idx] = False
                continue
            key, current = oldest
            if current != stamp:
                heapq.heappush(self._heap, (current, idx))
                continue
            self._drop(idx, key)
            self.evicted_global += 1
            following = self._logs[idx].oldest(held)
            if following is not None:
                heapq.heappush(self._heap, (following[1], idx))
            else:
                self._in_heap[idx] = False

    def _drop(self, idx: int, key: int) -> None:
        del self.held[idx][key]
        self.count -= 1
        for tier in TIERS:
            if self.masks[tier].get(key, 0) >> idx & 1:
                self._unmask_many(idx, (key,), tier)

    def _unmask_many(self, idx: int, keys: Sequence[int], tier: int) -> None:
        """Clear worker ``idx``'s bit on ``tier`` for ``keys``; drop masks left empty."""
        if not keys:
            return
        masks = self.masks[tier]
        cleared = list(map(and_, map(masks.get, keys, repeat(0)), repeat(~self._bits[idx])))
        masks.update(zip(keys, cleared, strict=True))
        if 0 in cleared:
            _drain(map(masks.pop, compress(keys, map(not_, cleared)), repeat(None)))
