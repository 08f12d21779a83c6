"""The KV prefix index: which worker holds which blocks, and how long a prefix each has.

Layout (chosen for CPython speed and small memory):

* workers get small integer indices (freed indices are reused, lowest first);
* per tier, a ``dict`` maps a block key to an ``int`` bitmask of the workers holding
  it (:mod:`scheduler.prefix.entries`). A lookup walks the request's chain once,
  intersecting masks, and stops when no worker is left: one C-level ``&`` per
  block for ≤ 1,024 workers, however many workers there are;
* predictions live apart (:mod:`scheduler.prefix.predictions`) and are reported
  apart, so a guess never reads as a confirmed block.

Eviction is LRU by last use (see :mod:`scheduler.prefix.entries`): ``max_entries``
bounds (worker, block) entries overall, ``worker_capacity`` / :meth:`set_capacity`
each worker. Dropping an entry the engine still holds only under-reports (safe).

Keys are the block hashes xor-ed with the model's namespace salt
(:func:`scheduler.prefix.hashing.namespace_salt`); without a model they are the
hashes themselves. Match results and snapshots are plain immutable values.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from scheduler.prefix.entries import GPU, HOST, EntryTable
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
from scheduler.prefix.wire import WireCleared, WireEvent, WireRemoved, WireStored, decode_event
from topology.errors import Issue, ValidationError

_TIER_BITS: dict[str, int] = {"gpu": GPU, "host": HOST}
#: 150–250 bytes per entry in CPython (bench/results/prefix_index.md): ≤ 500 MB.
DEFAULT_MAX_ENTRIES = 2_000_000
DEFAULT_MAX_PREDICTED = 200_000

Event = BlockStored | BlockRemoved | AllBlocksCleared
_STORED = (WireStored, BlockStored)
_REMOVED = (WireRemoved, BlockRemoved)
_EVENT_TYPES = (*_STORED, *_REMOVED, AllBlocksCleared, WireCleared)
_DUPLICATE = object()
#: Cached all-workers results, one per match length (see ``PrefixIndex._template``).
_MAX_TEMPLATES = 16


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValidationError("prefix index", [Issue(name, "must be an integer ≥ 1 or None")])


def _keys(hashes: Sequence[int], model: str | None) -> Sequence[int]:
    if not model:
        return hashes
    salt = namespace_salt(model)
    return [h ^ salt for h in hashes]


_BYTE_BITS = tuple(tuple(i for i in range(8) if value >> i & 1) for value in range(256))


def _bits(mask: int, *, sparse: bool = False) -> list[int]:
    """Indices of the set bits of ``mask``, lowest first.

    Wide masks go byte by byte: peeling bits off a 1,024-bit int one at a time
    costs a new 1,024-bit int per bit, which is quadratic in the worker count
    (``sparse``: the caller knows there are few bits, so peeling is cheaper).
    """
    if sparse or mask.bit_length() <= 64:
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
        self._table = EntryTable()
        self._capacity: list[int | None] = []
        self._capacity_override: dict[str, int | None] = {}
        self._last_seq: list[int | None] = []
        self._stale: set[int] = set()
        self._pred = PredictionTable(max_predicted)
        self._all_mask = 0
        self._templates: dict[int, dict[str, MatchInfo]] = {}
        self._byte_names: dict[int, tuple[str, ...]] = {}
        self._counters = dict.fromkeys(("events", "duplicates", "gaps", "resyncs"), 0)
        #: The last chain salted for a model, by identity (a tuple: it cannot change):
        #: the router matches a request's chain and then predicts the same chain.
        self._salted: tuple[tuple[int, ...], str, Sequence[int]] | None = None

    # ----------------------------------------------------------------- events

    def apply(self, event: Event | Mapping[str, Any] | bytes | str) -> ResyncRequest | None:
        """Apply one KV event; returns a :class:`ResyncRequest` when events were lost.

        JSON text or a mapping is validated first (bad fields raise
        ``ValidationError`` with their paths, bad JSON ``ParseError``, as
        :func:`~scheduler.prefix.events.parse_event` does). An event whose ``seq``
        is not above the worker's last one is a replay and is ignored. One that
        skips ahead is still applied — a store or removal reported now is true now
        — but the worker is flagged until :meth:`resync`.
        """
        if isinstance(event, (bytes, str)):  # a tuple: cheaper than a union here
            return self._apply_event(decode_event(event))
        if not isinstance(event, _EVENT_TYPES):  # a mapping; parse_event words any other type
            return self._apply_event(parse_event(event))
        return self._apply_event(event)

    def _apply_event(self, event: Event | WireEvent) -> ResyncRequest | None:
        worker = event.worker
        idx = self._ids.get(worker)
        if idx is None:
            idx = self._register(worker)
        last, seq = self._last_seq[idx], event.seq
        outcome = None
        # In order (the common case) needs no call; anything else is a replay or a gap.
        if last is None or seq != last + 1:
            outcome = self._check_seq(idx, worker, seq)
            if outcome is _DUPLICATE:
                return None
        self._last_seq[idx] = seq
        if isinstance(event, _STORED):
            self._store(idx, event)
        elif isinstance(event, _REMOVED):
            keys = event.block_hashes if not event.model else _keys(event.block_hashes,
                                                                      event.model)
            self._table.remove(idx, keys, _TIER_BITS[event.tier])
            if self._pred.masks:
                self._pred.discard(idx, keys)
        else:
            self._table.clear(idx)
            self._pred.drop_worker(idx)
        self._counters["events"] += 1
        return outcome if isinstance(outcome, ResyncRequest) else None

    def _store(self, idx: int, event: BlockStored | WireStored) -> None:
        keys = event.block_hashes if not event.model else _keys(event.block_hashes, event.model)
        table = self._table
        table.store(idx, keys, _TIER_BITS[event.tier])
        if self._pred.masks:
            self._pred.confirm(idx, keys)
        if self._capacity[idx] is not None or (
                self._max_entries is not None and table.count > self._max_entries):
            self._enforce(idx)

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
        self._table.clear(idx)
        for tier, blocks in ((GPU, gpu_blocks), (HOST, host_blocks)):
            keys = _keys(list(blocks), model)
            self._table.store(idx, keys, tier)
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
        self._table.clear(idx)
        self._pred.drop_worker(idx)
        self._names[idx] = None
        self._last_seq[idx] = None
        self._stale.discard(idx)
        self._all_mask &= ~(1 << idx)
        self._templates.clear()
        self._byte_names.clear()
        heapq.heappush(self._free, idx)
        return True

    # ------------------------------------------------------- routing side

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the index reads (seconds): prediction TTLs run on it."""
        return self._clock

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
        held = self._table.held[idx]
        fresh = [key for key in self._keys(block_hashes, model) if key not in held]
        return self._pred.add(idx, fresh, now + ttl_s)

    def _keys(self, hashes: Sequence[int], model: str | None) -> Sequence[int]:
        """:func:`_keys`, remembering the last tuple salted (the keys are only read)."""
        if not model:
            return hashes
        last = self._salted
        if last is not None and last[0] is hashes and last[1] == model:
            return last[2]
        keys = _keys(hashes, model)
        if isinstance(hashes, tuple):
            self._salted = (hashes, model, keys)
        return keys

    def touch(self, worker: str, block_hashes: Sequence[int], *, model: str | None = None) -> int:
        """Mark the blocks ``worker`` holds among ``block_hashes`` as just used (LRU).

        Call it when a request is routed to ``worker``; returns how many were held.
        """
        idx = self._ids.get(worker)
        if idx is None:
            return 0
        return self._table.touch(idx, _keys(block_hashes, model))

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
        keys = self._keys(block_hashes, model)
        if workers is None and not self._table.masks[HOST] and not self._pred.masks:
            result = self._match_all_gpu(keys)
        else:
            result = self._match_general(keys, workers)
        if self._stale:
            self._flag_stale(result)
        return result

    def _match_all_gpu(self, keys: Sequence[int]) -> dict[str, MatchInfo]:
        """Every worker, GPU tier only, no predictions: the router's common case.

        The walk yields (length, workers) groups; the result starts as a copy of a
        cached all-workers dict for the largest group's length (a C-level copy),
        and only the other groups' workers are written one by one.
        """
        mask = self._all_mask
        if not keys or not mask:
            return self._template(0).copy()
        get = self._table.masks[GPU].get
        groups: list[tuple[int, int]] = []
        alive = mask
        for pos, key in enumerate(keys):
            held = alive & get(key, 0)
            if held != alive:
                groups.append((pos, alive ^ held))
                if not held:
                    break
                alive = held
        else:
            groups.append((len(keys), alive))
        if len(groups) == 1:
            return self._template(groups[0][0]).copy()
        largest = max(range(len(groups)), key=lambda i: groups[i][1].bit_count())
        result = self._template(groups[largest][0]).copy()
        for i, (length, bits) in enumerate(groups):
            if i != largest:
                info = MatchInfo(length, length, length) if length else NO_MATCH
                result.update(dict.fromkeys(self._names_of(bits), info))
        return result

    def _template(self, length: int) -> dict[str, MatchInfo]:
        """A cached {worker: match of ``length`` blocks} over all workers (copy before use)."""
        template = self._templates.get(length)
        if template is None:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            info = MatchInfo(length, length, length) if length else NO_MATCH
            template = self._templates[length] = dict.fromkeys(self._ids, info)
        return template

    def _flag_stale(self, result: dict[str, MatchInfo]) -> None:
        names = self._names
        for idx in self._stale:
            name = names[idx]
            if name is not None and name in result:
                result[name] = result[name]._replace(needs_resync=True)

    def _match_general(self, keys: Sequence[int], workers: Collection[str] | None,
                       ) -> dict[str, MatchInfo]:
        """Any selection of workers, host tier and predictions included."""
        result, mask = self._selection(workers)
        if not mask or not keys:
            return result
        any_drops, conf_drops, host = self._walk(keys, mask)
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
        return result

    def _selection(self, workers: Collection[str] | None) -> tuple[dict[str, MatchInfo], int]:
        """A fresh all-zero result for the selected workers, and their bitmask."""
        if workers is None:
            # Copying a prepared dict is several times cheaper than rebuilding it.
            return self._template(0).copy(), self._all_mask
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
        gpu_get = self._table.masks[GPU].get
        host_map = self._table.masks[HOST]
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
        if mask.bit_length() <= 64 or mask.bit_count() <= 8:
            return [name for i in _bits(mask, sparse=True) if (name := names[i]) is not None]
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
        table = self._table
        keys = set(table.masks[GPU]).union(table.masks[HOST])
        c = self._counters
        return IndexStats(
            workers=len(self._ids), blocks=len(keys), entries=table.count,
            gpu_entries=table.tier_count(GPU), host_entries=table.tier_count(HOST),
            predicted_entries=len(self._pred), max_entries=self._max_entries,
            events_applied=c["events"], duplicates_ignored=c["duplicates"],
            gaps_detected=c["gaps"], resyncs=c["resyncs"],
            evicted_global=table.evicted_global, evicted_capacity=table.evicted_capacity,
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
        table = self._table
        tiers = {key: table.tiers_of(idx, key) for key in table.held[idx]}
        return WorkerSnapshot(
            name=name,
            gpu=frozenset(k for k, v in tiers.items() if v & GPU),
            host=frozenset(k for k, v in tiers.items() if v & HOST),
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
            self._names[idx] = worker
            self._capacity[idx], self._last_seq[idx] = capacity, None
        else:
            idx = len(self._names)
            self._names.append(worker)
            self._capacity.append(capacity)
            self._last_seq.append(None)
            self._table.ensure_slot(idx)
        self._ids[worker] = idx
        self._all_mask |= 1 << idx
        self._templates.clear()
        self._byte_names.clear()
        return idx

    def _enforce(self, idx: int) -> None:
        self._table.enforce(idx, self._capacity[idx], self._max_entries)
