"""The KV prefix index: which worker holds which blocks, and how long a prefix each has.

Layout (chosen for CPython speed and small memory):

* workers get small integer indices (freed indices are reused, lowest first);
* for each tier a ``dict`` maps a block key to an ``int`` bitmask of the workers
  holding it. A lookup walks the request's chain once, intersecting masks
  (``alive &= mask``) and stops when no worker is left — one C-level ``&`` per block
  for ≤ 1,024 workers, however many workers there are;
* each worker has an ``OrderedDict`` key → ``stamp << 2 | tier bits`` in LRU order,
  used for removal, per-worker capacity and the global bound.

Eviction is **LRU by last use**: storing a block (event or resync) or :meth:`touch`
counts as use. A chain is stamped leaf first, so its first block is the most
recently used and evictions take the ends of chains before their shared prefixes
(as vLLM's free queue does). The global bound ``max_entries`` evicts the globally
least recently used (worker, block) entry, found through a heap of each worker's
oldest stamp; ``worker_capacity`` (or :meth:`set_capacity`) evicts within a worker.
Dropping an entry the engine still holds only under-reports, which is safe.

Keys are the block hashes xor-ed with the model's namespace salt
(:func:`scheduler.prefix.hashing.namespace_salt`); without a model they are the
hashes themselves. Match results and snapshots are plain immutable values.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from scheduler.prefix.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    ResyncRequest,
    parse_event,
)
from scheduler.prefix.hashing import namespace_salt
from scheduler.prefix.models import (
    NO_MATCH,
    IndexSnapshot,
    IndexStats,
    MatchInfo,
    WorkerSnapshot,
)
from scheduler.prefix.predictions import PredictionTable
from topology.errors import Issue, ValidationError

GPU = 1
HOST = 2
_TIER_BITS: dict[str, int] = {"gpu": GPU, "host": HOST}
#: ~150 bytes per entry in CPython: about 300 MB at the default bound.
DEFAULT_MAX_ENTRIES = 2_000_000
DEFAULT_MAX_PREDICTED = 200_000

Event = BlockStored | BlockRemoved | AllBlocksCleared
_DUPLICATE = object()


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValidationError("prefix index", [Issue(name, "must be an integer ≥ 1 or None")])


def _keys(hashes: Sequence[int], model: str | None) -> Sequence[int]:
    salt = namespace_salt(model)
    return [h ^ salt for h in hashes] if salt else hashes


_BYTE_BITS = tuple(tuple(i for i in range(8) if value >> i & 1) for value in range(256))


def _bits(mask: int) -> list[int]:
    """Indices of the set bits of ``mask``, lowest first.

    Wide masks go byte by byte: peeling bits off a 1,024-bit int one at a time
    costs a new 1,024-bit int per bit, which is quadratic in the worker count.
    """
    if mask.bit_length() <= 64:
        out = []
        while mask:
            low = mask & -mask
            out.append(low.bit_length() - 1)
            mask ^= low
        return out
    out = []
    for base, byte in enumerate(mask.to_bytes((mask.bit_length() + 7) // 8, "little")):
        if byte:
            offset = base * 8
            out.extend([offset + i for i in _BYTE_BITS[byte]])
    return out


class PrefixIndex:
    """Tracks KV blocks per worker from events and predictions; answers prefix matches.

    Not thread-safe: one owner applies events and answers lookups (the router's
    event loop); other replicas share state through the store, not this object.
    """

    def __init__(self, *, max_entries: int | None = DEFAULT_MAX_ENTRIES,
                 worker_capacity: int | None = None,
                 max_predicted: int = DEFAULT_MAX_PREDICTED,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty index.

        ``max_entries`` bounds (worker, block) entries overall, ``worker_capacity``
        each worker's (``None``: unbounded); ``clock`` returns seconds and drives
        prediction TTLs (inject a fake one for tests and the simulator).
        """
        _positive("max_entries", max_entries)
        _positive("worker_capacity", worker_capacity)
        _positive("max_predicted", max_predicted)
        self._max_entries = max_entries
        self._default_capacity = worker_capacity
        self._clock = clock
        self._ids: dict[str, int] = {}
        self._names: list[str | None] = []
        self._free: list[int] = []
        self._entries: list[OrderedDict[int, int]] = []
        self._capacity: list[int | None] = []
        self._capacity_override: dict[str, int | None] = {}
        self._last_seq: list[int | None] = []
        self._stale: set[int] = set()
        self._tiers: dict[int, dict[int, int]] = {GPU: {}, HOST: {}}
        self._pred = PredictionTable(max_predicted)
        self._all_mask = 0
        self._template: dict[str, MatchInfo] | None = None
        self._byte_names: dict[int, tuple[str, ...]] = {}
        self._stamp = 0
        self._heap: list[tuple[int, int]] = []
        self._in_heap: list[bool] = []
        self._count = 0
        self._tier_count = {GPU: 0, HOST: 0}
        self._counters = dict.fromkeys(
            ("events", "duplicates", "gaps", "resyncs", "evicted_global", "evicted_capacity"), 0)

    # ----------------------------------------------------------------- events

    def apply(self, event: Event | Mapping[str, Any]) -> ResyncRequest | None:
        """Apply one KV event; returns a :class:`ResyncRequest` when events were lost.

        A mapping is validated first (bad fields raise ``ValidationError`` with their
        paths). An event whose ``seq`` is not above the worker's last one is a replay
        and is ignored. One that skips ahead is still applied — a store or removal
        reported now is true now — but the worker is flagged until :meth:`resync`.
        """
        if not isinstance(event, BlockStored | BlockRemoved | AllBlocksCleared):
            event = parse_event(event)
        idx = self._register(event.worker)
        outcome = self._check_seq(idx, event.worker, event.seq)
        if outcome is _DUPLICATE:
            return None
        if isinstance(event, BlockStored):
            keys = _keys(event.block_hashes, event.model)
            self._store(idx, keys, _TIER_BITS[event.tier])
            self._pred.confirm(idx, keys)
            self._enforce(idx)
        elif isinstance(event, BlockRemoved):
            self._remove(idx, _keys(event.block_hashes, event.model), _TIER_BITS[event.tier])
        else:
            self._clear(idx)
            self._pred.drop_worker(idx)
        self._counters["events"] += 1
        return outcome if isinstance(outcome, ResyncRequest) else None

    def _check_seq(self, idx: int, worker: str, seq: int) -> object:
        last = self._last_seq[idx]
        if last is not None and seq <= last:
            self._counters["duplicates"] += 1
            return _DUPLICATE
        self._last_seq[idx] = seq
        if last is None or seq == last + 1:
            return None
        self._counters["gaps"] += 1
        self._stale.add(idx)
        return ResyncRequest(worker=worker, expected_seq=last + 1, got_seq=seq)

    def resync(self, worker: str, gpu_blocks: Iterable[int], host_blocks: Iterable[int] = (),
               *, seq: int | None = None, model: str | None = None) -> None:
        """Replace ``worker``'s confirmed state wholesale (after a :class:`ResyncRequest`).

        Blocks are given in chain order per tier; ``seq`` is the engine's sequence
        number at dump time (the next event must be ``seq + 1``; ``None`` accepts
        any). Predictions for in-flight requests are kept.
        """
        idx = self._register(worker)
        self._clear(idx)
        for tier, blocks in ((GPU, gpu_blocks), (HOST, host_blocks)):
            keys = _keys(list(blocks), model)
            self._store(idx, keys, tier)
            self._pred.confirm(idx, keys)
        self._last_seq[idx] = seq
        self._stale.discard(idx)
        self._counters["resyncs"] += 1
        self._enforce(idx)

    def remove_worker(self, worker: str) -> bool:
        """Forget ``worker`` entirely (entries, predictions, sequence state); False if unknown."""
        idx = self._ids.pop(worker, None)
        if idx is None:
            return False
        self._clear(idx)
        self._pred.drop_worker(idx)
        self._entries[idx] = OrderedDict()
        self._names[idx] = None
        self._last_seq[idx] = None
        self._stale.discard(idx)
        self._all_mask &= ~(1 << idx)
        self._template = None
        self._byte_names.clear()
        heapq.heappush(self._free, idx)
        return True

    # ------------------------------------------------------- routing side

    def predict(self, worker: str, block_hashes: Sequence[int], ttl_s: float, *,
                model: str | None = None) -> int:
        """Count ``block_hashes`` as held by ``worker`` for ``ttl_s`` seconds.

        For engines without KV events, and to bridge a routing decision and the
        engine's first event: a later :class:`BlockStored` of the same block on the
        same worker confirms (replaces) the prediction. Blocks the worker already
        holds are skipped. Returns the number of predicted entries made.
        """
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
            raise ValidationError("predict", [Issue("ttl_s", "must be a number > 0")])
        idx = self._register(worker)
        now = self._clock()
        self._pred.expire(now)
        held = self._entries[idx]
        fresh = [key for key in _keys(block_hashes, model) if key not in held]
        return self._pred.add(idx, fresh, now + ttl_s)

    def touch(self, worker: str, block_hashes: Sequence[int], *, model: str | None = None) -> int:
        """Mark the blocks ``worker`` holds among ``block_hashes`` as just used (LRU).

        Call it when a request is routed to ``worker``; returns how many were held.
        """
        idx = self._ids.get(worker)
        if idx is None or not self._entries[idx]:
            return 0
        held = self._entries[idx]
        stamp = self._stamp
        touched = 0
        for key in reversed(_keys(block_hashes, model)):
            value = held.get(key)
            if value is not None:
                held[key] = stamp << 2 | (value & 3)
                held.move_to_end(key)
                stamp += 1
                touched += 1
        self._stamp = stamp
        return touched

    def set_capacity(self, worker: str, capacity: int | None) -> None:
        """Give ``worker`` its own block capacity (``None``: unbounded); applied at once."""
        _positive("capacity", capacity)
        self._capacity_override[worker] = capacity
        idx = self._register(worker)
        self._capacity[idx] = capacity
        self._enforce(idx)

    def match(self, block_hashes: Sequence[int], workers: Collection[str] | None = None, *,
              model: str | None = None) -> dict[str, MatchInfo]:
        """Longest held prefix of ``block_hashes`` for every worker (or just ``workers``).

        Every requested worker appears in the result, unknown ones with zero. The
        chain is walked once and the walk stops as soon as no worker holds the
        next block. Hashes are trusted here (validate untrusted ones with
        :func:`~scheduler.prefix.hashing.external_block_hashes`).
        """
        if len(self._pred):
            self._pred.expire(self._clock())
        result, mask = self._selection(workers)
        if not mask or not block_hashes:
            return result
        any_drops, conf_drops, host = self._walk(_keys(block_hashes, model), mask)
        names = self._names
        if not host and any_drops == conf_drops:
            # Common case: whole groups of workers share one (immutable) result.
            for length, bits in any_drops:
                result.update(dict.fromkeys(self._names_of(bits),
                                            MatchInfo(length, length, length)))
        else:
            confirmed = {i: length for length, bits in conf_drops for i in _bits(bits)}
            for length, bits in any_drops:
                for idx in _bits(bits):
                    conf = confirmed.get(idx, 0)
                    on_host = host.get(idx, 0)
                    name = names[idx]
                    if name is not None:
                        result[name] = MatchInfo(length, conf, conf - on_host, on_host)
        for idx in self._stale:
            name = names[idx]
            if name is not None and mask >> idx & 1:
                result[name] = result[name]._replace(needs_resync=True)
        return result

    def _selection(self, workers: Collection[str] | None) -> tuple[dict[str, MatchInfo], int]:
        """A fresh all-zero result for the selected workers, and their bitmask."""
        if workers is None:
            if self._template is None:
                self._template = dict.fromkeys(self._ids, NO_MATCH)
            # Copying a prepared dict is several times cheaper than rebuilding it.
            return self._template.copy(), self._all_mask
        mask = 0
        for name in workers:
            idx = self._ids.get(name)
            if idx is not None:
                mask |= 1 << idx
        return dict.fromkeys(workers, NO_MATCH), mask

    def _walk(self, keys: Sequence[int], mask: int,
              ) -> tuple[list[tuple[int, int]], list[tuple[int, int]], dict[int, int]]:
        """Walk the chain once, intersecting worker masks.

        Returns (length, workers) groups for the match with predictions and for the
        confirmed match — each a bitmask of the workers whose run ends at that
        length — and the host-only block count per worker index. Workers that fail
        at block 0 appear in no group: they keep the shared zero result.
        """
        gpu_get = self._tiers[GPU].get
        host_map = self._tiers[HOST]
        host_get = host_map.get if host_map else None
        pred_get = self._pred.masks.get if self._pred.masks else None
        any_drops: list[tuple[int, int]] = []
        conf_drops: list[tuple[int, int]] = []
        host: dict[int, int] = {}
        alive_c = alive_a = mask
        for pos, key in enumerate(keys):
            on_gpu = gpu_get(key, 0)
            on_host = host_get(key, 0) if host_get is not None else 0
            held = on_gpu | on_host
            next_c = alive_c & held
            next_a = next_c if pred_get is None else alive_a & (held | pred_get(key, 0))
            if pos:
                if next_c != alive_c:
                    conf_drops.append((pos, alive_c ^ next_c))
                if next_a != alive_a:
                    any_drops.append((pos, alive_a ^ next_a))
            if on_host and next_c & on_host & ~on_gpu:
                for idx in _bits(next_c & on_host & ~on_gpu):
                    host[idx] = host.get(idx, 0) + 1
            alive_c, alive_a = next_c, next_a
            if not alive_a:
                break
        else:
            if alive_c:
                conf_drops.append((len(keys), alive_c))
            if alive_a:
                any_drops.append((len(keys), alive_a))
        return any_drops, conf_drops, host

    def _names_of(self, mask: int) -> list[str]:
        """Names of the workers in ``mask``, via cached per-byte name groups.

        A lookup over 1,024 workers can drop hundreds at one position (block 0 is
        often shared by all); one cached tuple per (byte position, byte value)
        turns that into ~128 dict hits instead of a bit-by-bit scan.
        """
        names = self._names
        if mask.bit_length() <= 64:
            return [name for i in _bits(mask) if (name := names[i]) is not None]
        cache = self._byte_names
        out: list[str] = []
        for base, byte in enumerate(mask.to_bytes((mask.bit_length() + 7) // 8, "little")):
            if byte:
                key = base << 8 | byte
                group = cache.get(key)
                if group is None:
                    group = cache[key] = tuple(
                        name for i in _BYTE_BITS[byte] if (name := names[base * 8 + i]))
                out.extend(group)
        return out

    # --------------------------------------------------------- inspection

    def workers(self) -> tuple[str, ...]:
        """Names of the known workers, in registration order."""
        return tuple(self._ids)

    def stats(self) -> IndexStats:
        """Sizes and counters (expired predictions are dropped first)."""
        self._pred.expire(self._clock())
        keys = set(self._tiers[GPU]).union(self._tiers[HOST])
        c = self._counters
        return IndexStats(
            workers=len(self._ids), blocks=len(keys), entries=self._count,
            gpu_entries=self._tier_count[GPU], host_entries=self._tier_count[HOST],
            predicted_entries=len(self._pred), max_entries=self._max_entries,
            events_applied=c["events"], duplicates_ignored=c["duplicates"],
            gaps_detected=c["gaps"], resyncs=c["resyncs"],
            evicted_global=c["evicted_global"], evicted_capacity=c["evicted_capacity"],
            predictions_made=self._pred.made, predictions_confirmed=self._pred.confirmed,
            predictions_expired=self._pred.expired, predictions_evicted=self._pred.evicted,
            workers_needing_resync=tuple(sorted(n for i in self._stale
                                                if (n := self._names[i]) is not None)))

    def snapshot(self) -> IndexSnapshot:
        """Every worker's entries as immutable data (for policies, tests and the store)."""
        now = self._clock()
        self._pred.expire(now)
        return IndexSnapshot(taken_at=now, workers=tuple(
            self._worker_snapshot(name, idx) for name, idx in self._ids.items()))

    def _worker_snapshot(self, name: str, idx: int) -> WorkerSnapshot:
        held = self._entries[idx]
        return WorkerSnapshot(
            name=name,
            gpu=frozenset(k for k, v in held.items() if v & GPU),
            host=frozenset(k for k, v in held.items() if v & HOST),
            predicted=self._pred.keys_of(idx), last_seq=self._last_seq[idx],
            needs_resync=idx in self._stale, capacity=self._capacity[idx])

    # ---------------------------------------------------------- internals

    def _register(self, worker: str) -> int:
        idx = self._ids.get(worker)
        if idx is not None:
            return idx
        capacity = self._capacity_override.get(worker, self._default_capacity)
        if self._free:
            idx = heapq.heappop(self._free)
            self._names[idx], self._entries[idx] = worker, OrderedDict()
            self._capacity[idx], self._last_seq[idx] = capacity, None
        else:
            idx = len(self._names)
            self._names.append(worker)
            self._entries.append(OrderedDict())
            self._capacity.append(capacity)
            self._last_seq.append(None)
            self._in_heap.append(False)
        self._ids[worker] = idx
        self._all_mask |= 1 << idx
        self._template = None
        self._byte_names.clear()
        return idx

    def _store(self, idx: int, keys: Sequence[int], tier: int) -> None:
        held = self._entries[idx]
        held_get = held.get
        masks = self._tiers[tier]
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
        self._count += added
        self._tier_count[tier] += tiered
        self._stamp = stamp
        if held and not self._in_heap[idx]:
            heapq.heappush(self._heap, (next(iter(held.values())) >> 2, idx))
            self._in_heap[idx] = True

    def _remove(self, idx: int, keys: Iterable[int], tier: int) -> None:
        held = self._entries[idx]
        for key in keys:
            value = held.get(key)
            if value is None or not value & tier:
                continue
            self._unmask(idx, key, tier)
            if value & 3 & ~tier:
                held[key] = value & ~tier
            else:
                del held[key]
                self._count -= 1
        if len(self._pred):
            self._pred.discard(idx, keys)

    def _clear(self, idx: int) -> None:
        held = self._entries[idx]
        if not held:
            return
        for key, value in held.items():
            self._drop_masks(idx, key, value)
        self._count -= len(held)
        held.clear()

    def _unmask(self, idx: int, key: int, tier: int) -> None:
        masks = self._tiers[tier]
        mask = masks[key] & ~(1 << idx)
        if mask:
            masks[key] = mask
        else:
            del masks[key]
        self._tier_count[tier] -= 1

    def _drop_masks(self, idx: int, key: int, value: int) -> None:
        for tier in (GPU, HOST):
            if value & tier:
                self._unmask(idx, key, tier)

    def _enforce(self, idx: int) -> None:
        held = self._entries[idx]
        capacity = self._capacity[idx]
        if capacity is not None:
            while len(held) > capacity:
                key, value = held.popitem(last=False)
                self._drop_masks(idx, key, value)
                self._count -= 1
                self._counters["evicted_capacity"] += 1
        if self._max_entries is not None and self._count > self._max_entries:
            self._evict_global(self._max_entries)

    def _evict_global(self, limit: int) -> None:
        """Drop globally least recently used entries until at most ``limit`` remain.

        The heap holds one (stamp, worker) per worker with entries; a stamp may be
        older than that worker's real oldest entry (it was touched or evicted
        since), in which case it is refreshed and pushed back.
        """
        while self._count > limit and self._heap:
            stamp, idx = heapq.heappop(self._heap)
            held = self._entries[idx]
            if not held:
                self._in_heap[idx] = False
                continue
            key, value = next(iter(held.items()))
            if value >> 2 != stamp:
                heapq.heappush(self._heap, (value >> 2, idx))
                continue
            held.popitem(last=False)
            self._drop_masks(idx, key, value)
            self._count -= 1
            self._counters["evicted_global"] += 1
            if held:
                heapq.heappush(self._heap, (next(iter(held.values())) >> 2, idx))
            else:
                self._in_heap[idx] = False
