"""Live snapshots for the route path: built once, then patched between requests.

A route request needs a :class:`~policies.snapshot.Snapshot` of every routable worker
with its free KV blocks and reserved load. Between two requests usually only the
chosen pair changed (two free-block counts, two loads), so :class:`LiveSnapshots`
keeps, per model, the last listing it saw and the snapshot built from it, and
compares the new listing entry by entry: unchanged workers keep their
:class:`~policies.snapshot.Worker` objects, changed loads patch the snapshot's
arrays (:meth:`Snapshot.updated`). When one worker joins or leaves between two
requests, it is spliced in or out: its listing entry, and its row of every per-worker
array of the snapshot (:meth:`Snapshot.spliced`, which the router follows with its
pair table); only the entries of other workers that are not the same objects as
before are looked at, in Python. A worker whose sidecar drains
(``POST /v1/sidecars/NAME/drain``) leaves routing the same way: its row is spliced out of
the snapshot (it keeps its listing slot, its transfers in flight go on) and spliced
back in when it registers again. Any other change of the worker set (several at
once, a re-registration) merges the listing by name: only the entries that changed
get new Worker objects, and the snapshot is assembled from the kept ones with passes
that run in C, in a worker thread past :data:`THREAD_REBUILD_FROM` workers.

With the in-memory stores (one replica), the route path lists no worker at all: the
stores journal the names whose entry or load changed (:class:`Journaled`,
:mod:`scheduler.state.journal`), and the view catches up with just those names — a
join or leave spliced, a load patched — so a route's cost does not grow with the
worker count (listing 10,000 entries and loads touched every one of them: ~5 ms per
route). It reads the stores in full only when the journals cannot say: first use,
more than :data:`JOURNAL_LIMIT` changes, a lapsed lease, engine instances, other
pairings.

Each model's snapshot carries that model's KV block size (:class:`BlockSizes`): what
its workers registered (the engine's own block size), else the per-model setting,
else the service default. Token ids are hashed into blocks of that size.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, compress, count, islice, repeat
from operator import attrgetter, is_not, itemgetter
from typing import Any

import numpy as np

from api.routing import Fabric, preferred_pairs
from policies.snapshot import IntArray, Role, Snapshot, Worker
from scheduler.router.snapshot import GpuIndex, domain_arrays
from scheduler.state.base import WorkerEntry
from scheduler.state.memory import MemoryStore
from scheduler.state.reservations import MemoryLoads, WorkerLoad
from scheduler.transfer.plan import WorkerRegistration

log = logging.getLogger(__name__)
#: Distinct models whose snapshots are kept (past this, the cache starts over).
MAX_MODELS = 64
#: A worker's concurrent-request limit when it has no declared capacity.
DEFAULT_MAX_RUNNING = 256
#: Listings from this many workers are rebuilt in a worker thread (:meth:`LiveSnapshots.current`).
THREAD_REBUILD_FROM = 1024
#: Tokens per KV block when neither the workers nor the settings say (vLLM's default).
DEFAULT_BLOCK_TOKENS = 16
#: Changes since the last route past which the listing is read in full instead (or a
#: sixteenth of the workers, if more).
JOURNAL_LIMIT = 256
_ROLES = {role.value: role for role in Role}
_NAME, _HELD_OUT = attrgetter("registration.name"), attrgetter("held_out")
_REGISTRATION, _WORKER = attrgetter("registration"), attrgetter("worker")
_BLOCK_TOKENS, _ID = attrgetter("block_tokens"), attrgetter("id")
#: (queued tokens, running requests, max requests, promised KV blocks, context tokens)
#: of a worker; None: no capacity set.
LoadKey = tuple[int, int, int, int, int] | None


@dataclass(frozen=True)
class BlockSizes:
    """Where a model's KV block size (tokens per block) comes from, in order: what its
    workers registered, ``per_model`` (settings), ``default``."""

    default: int = DEFAULT_BLOCK_TOKENS
    per_model: Mapping[str, int] = field(default_factory=dict)

    def of(self, model: str | None, registrations: Sequence[WorkerRegistration]) -> int:
        """The block size of ``model`` served by ``registrations``."""
        return self.counted(model, Counter(map(_BLOCK_TOKENS, registrations)))

    def counted(self, model: str | None, registered: Counter[int | None]) -> int:
        """The block size of ``model`` whose workers registered these block sizes (how
        many workers each; None: a worker that did not say)."""
        counts = Counter({size: n for size, n in registered.items() if size is not None and n})
        if counts:
            size = int(counts.most_common(1)[0][0] or self.default)
            if len(counts) > 1:
                log.warning("workers of model %s register different KV block sizes %s; "
                            "routing hashes prompts into %d-token blocks", model,
                            sorted(filter(None, counts)), size)
            return size
        configured = self.per_model.get(model) if model is not None else None
        return configured if configured is not None else self.default


@dataclass(frozen=True)
class Journaled:
    """Stores that journal their changes (the in-memory ones): a snapshot catches up
    with them by name, looking only at the workers that changed since it last did,
    instead of reading every worker's entry and load (milliseconds at 10,000 workers)."""

    store: MemoryStore
    loads: MemoryLoads

    @staticmethod
    def of(store: object, loads: object) -> Journaled | None:
        """The pair when both stores journal their changes, else None."""
        if isinstance(store, MemoryStore) and isinstance(loads, MemoryLoads):
            return Journaled(store, loads)
        return None

    def versions(self) -> tuple[int, int]:
        """The journals' current versions (workers, loads)."""
        return self.store.journal.version, self.loads.journal.version


@dataclass(slots=True)
class _Seen:
    """One listing entry as last seen, and its Worker (None: not routable here)."""

    registration: WorkerRegistration
    free_blocks: int
    load: LoadKey
    worker: Worker | None
    #: Its sidecar is draining: out of routing (no Worker) until it registers again.
    draining: bool = False
    #: Draining, and routable for the view's model otherwise (what a 503 counts).
    held_out: bool = False


@dataclass
class _ModelView:
    """The last listing seen for one model and the snapshot built from it."""

    model: str | None = None
    seen: list[_Seen] = field(default_factory=list)
    #: The listing's entry and load objects as last handed out, and the names. The
    #: memory store hands out the same objects until they change, so an identity
    #: sweep (in C, via ``map``) finds the few entries worth a closer look.
    entries: list[WorkerEntry] = field(default_factory=list)
    loads: list[WorkerLoad | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    #: name → index in the listing above (None: not kept up to date by a splice).
    index: dict[str, int] | None = None
    #: Per listing index, how many routable workers come up to and including it (the
    #: snapshot position of a routable worker is its count - 1).
    counts: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: How many routable workers registered each block size.
    block_counts: Counter[int | None] = field(default_factory=Counter)
    #: Workers held out of routing by a drain, by role (:attr:`_Seen.held_out`).
    drained: Counter[str] = field(default_factory=Counter)
    snapshot: Snapshot | None = None
    pairings: Any = None
    kv_bytes: int = 0
    #: Engine instances (from the engine registry) after the listing's workers, and the
    #: block size they set (None: :class:`BlockSizes` decides).
    engines: tuple[Worker, ...] = ()
    block_tokens: int | None = None
    #: The journals this view has caught up with and their versions then (None: the
    #: listing came from elsewhere; read it in full).
    journaled: Journaled | None = None
    versions: tuple[int, int] = (0, 0)


def _load_key(load: WorkerLoad | None) -> LoadKey:
    return None if load is None else (load.tokens, load.requests, load.max_requests,
                                      load.blocks, load.context)


def _routable(reg: WorkerRegistration, fabric: Fabric, model: str | None) -> bool:
    serves = model is None or reg.model is None or reg.model == model
    return serves and bool(reg.gpus) and all(g in fabric.known for g in reg.gpus)


def _worker(reg: WorkerRegistration, free_blocks: int, load: LoadKey) -> Worker:
    tokens, requests, max_requests, promised, context = load or (0, 0, 0, 0, 0)
    return Worker(reg.name, _ROLES[reg.role], reg.gpus, tokens, requests,
                  max_requests or DEFAULT_MAX_RUNNING, free_blocks, reg.layout.num_blocks,
                  promised_kv_blocks=promised, context_tokens=context)


def _gather(items: list[Any], where: list[int]) -> list[Any]:
    """``[items[i] for i in where]`` in C (``items`` ends with a filler for new names)."""
    if not where:
        return []
    found = itemgetter(*where)(items)
    return [found] if len(where) == 1 else list(found)


class LiveSnapshots:
    """Snapshots of the live workers, per model, patched while the worker set holds."""

    def __init__(self, block_sizes: BlockSizes | None = None) -> None:
        """Create an empty cache (``block_sizes``: where block sizes come from)."""
        self.block_sizes = block_sizes or BlockSizes()
        self._fabric: Fabric | None = None
        self._views: dict[str | None, _ModelView] = {}
        self._gpus: GpuIndex | None = None
        self._lock = asyncio.Lock()
        #: Workers of the last snapshot :func:`api.decide.decide` took from here (how
        #: big the next one will likely be).
        self.last_size = 0

    def drained(self, fabric: Fabric, model: str | None) -> dict[str, int]:
        """Workers that would route ``model`` but are held out by a drain, by role, as of
        the last snapshot of ``model`` on ``fabric`` (kept as workers come and go: no
        pass over them)."""
        view = self._views.get(model) if fabric is self._fabric else None
        return {} if view is None else {role: n for role, n in view.drained.items() if n}

    def snapshot(self, fabric: Fabric, entries: Sequence[WorkerEntry],
                 loads: Mapping[str, WorkerLoad], model: str | None, *, kv_bytes: int,
                 pairings: Sequence[Any], link_load: Mapping[str, int] | None = None,
                 engines: Sequence[Worker] = (), block_tokens: int | None = None
                 ) -> Snapshot:
        """The snapshot of ``entries`` (with their reserved ``loads``) routable for
        ``model``; ``pairings`` are the placement's, kept where both sides are
        registered under the placement's instance ids; ``link_load``: transfers in
        flight per shared link. ``engines`` are engine instances already built as
        workers (load merged), placed after the listing's workers; ``block_tokens`` the
        engines' block size (None: :class:`BlockSizes` decides). For one thread; the
        service uses :meth:`current`."""
        view, known = self._view(fabric, model), _on_fabric(fabric, engines)
        if not self._patched(view, entries, loads, kv_bytes, pairings, known, block_tokens):
            self._rebuild(view, fabric, entries, loads, model, kv_bytes, pairings, known,
                          block_tokens)
        view.journaled = None
        return _with_load(view, link_load)

    async def current(self, fabric: Fabric, entries: Sequence[WorkerEntry],
                      loads: Mapping[str, WorkerLoad], model: str | None, *, kv_bytes: int,
                      pairings: Sequence[Any], link_load: Mapping[str, int] | None = None,
                      engines: Sequence[Worker] = (), block_tokens: int | None = None,
                      journaled: Journaled | None = None) -> Snapshot:
        """:meth:`snapshot` for the event loop: a rebuild over many workers runs in a
        worker thread (one at a time), so the loop keeps answering (health probes,
        heartbeats) while a worker joins a cluster of thousands.

        With ``journaled`` stores, ``entries`` and ``loads`` are not read: the snapshot
        catches up with the workers the journals name (a few per request), and reads
        the stores in full only when it cannot (first use, many changes, a lapsed
        lease, engine instances, other pairings)."""
        async with self._lock:
            view, known = self._view(fabric, model), _on_fabric(fabric, engines)
            versions = (0, 0)
            if journaled is not None:
                if self._caught_up(view, journaled, kv_bytes, pairings, known, block_tokens):
                    return _with_load(view, link_load)
                entries = await journaled.store.list_workers()  # (may restart the journal)
                loads = await journaled.loads.loads()
                versions = journaled.versions()  # no await since the reads: what they saw
            view.journaled = None  # while the view follows another listing
            if not self._patched(view, entries, loads, kv_bytes, pairings, known,
                                 block_tokens):
                rebuild = functools.partial(self._rebuild, view, fabric, entries, loads, model,
                                            kv_bytes, pairings, known, block_tokens)
                if len(entries) + len(known) >= THREAD_REBUILD_FROM:
                    await asyncio.to_thread(rebuild)
                else:
                    rebuild()
            view.journaled, view.versions = journaled, versions
            return _with_load(view, link_load)

    def _caught_up(self, view: _ModelView, journaled: Journaled, kv_bytes: int,
                   pairings: Sequence[Any], engines: tuple[Worker, ...],
                   block_tokens: int | None) -> bool:
        """Whether ``view`` was brought up to date from the journals alone (the workers
        they name since the view's versions: joined, left, re-registered or changed)."""
        if (view.snapshot is None or view.journaled != journaled or engines or view.engines
                or pairings is not view.pairings or kv_bytes != view.kv_bytes
                or block_tokens != view.block_tokens or self._fabric is None):
            return False
        # past this many changes, reading every worker costs less than looking each up
        limit = max(JOURNAL_LIMIT, len(view.names) // 16)
        workers = journaled.store.changed_since(view.versions[0], limit)
        loads = journaled.loads.journal.since(view.versions[1], limit)
        if workers is None or loads is None:
            return False
        versions = journaled.versions()
        if workers or loads:
            self._catch_up(view, self._fabric, journaled, sorted(workers | loads))
        view.versions = versions
        return True

    def _catch_up(self, view: _ModelView, fabric: Fabric, journaled: Journaled,
                  names: list[str]) -> None:
        """Take the current entry and load of each of ``names`` (sorted) into ``view``:
        one splice per worker that joined or left, one array patch for the loads."""
        patched: list[tuple[int, WorkerEntry, WorkerLoad | None]] = []
        for name in names:  # in name order: a later splice never moves an earlier slot
            entry, load = journaled.store.entry(name), journaled.loads.load(name)
            at = bisect_left(view.names, name)
            here = at < len(view.names) and view.names[at] == name
            if here and (entry is None or _replaced(view.seen[at], entry)):
                self._remove(view, at)
                here = False
            if entry is None:
                continue
            if here:
                patched.append((at, entry, load))
            else:
                self._insert(view, fabric, entry, {name: load} if load else {}, at)
        changed: dict[int, Worker] = {}
        for at, entry, load in patched:
            view.entries[at], view.loads[at] = entry, load
            seen = view.seen[at]
            seen.registration = entry.registration
            free, key = entry.free_blocks, _load_key(load)
            if (free, key) != (seen.free_blocks, seen.load):
                seen.free_blocks, seen.load = free, key
                if seen.worker is not None:
                    seen.worker = _worker(seen.registration, free, key)
                    changed[int(view.counts[at]) - 1] = seen.worker
        if changed:
            assert view.snapshot is not None
            view.snapshot = view.snapshot.updated(changed)

    def _view(self, fabric: Fabric, model: str | None) -> _ModelView:
        if fabric is not self._fabric or len(self._views) > MAX_MODELS:
            self._fabric, self._views, self._gpus = fabric, {}, GpuIndex(fabric.distance)
        view = self._views.get(model)
        if view is None:
            view = self._views[model] = _ModelView(model)
        return view

    def _patched(self, view: _ModelView, entries: Sequence[WorkerEntry],
                 loads: Mapping[str, WorkerLoad], kv_bytes: int, pairings: Sequence[Any],
                 engines: tuple[Worker, ...], block_tokens: int | None) -> bool:
        """Whether ``view`` could be brought up to date in place (load changes only)."""
        if (view.snapshot is None or pairings is not view.pairings
                or kv_bytes != view.kv_bytes or block_tokens != view.block_tokens):
            return False
        if len(entries) != len(view.seen) and not self._splice(view, entries, loads):
            return False
        return self._patch(view, entries, loads) and self._patch_engines(view, engines)

    def _splice(self, view: _ModelView, entries: Sequence[WorkerEntry],
                loads: Mapping[str, WorkerLoad]) -> bool:
        """Take one worker joining or leaving into ``view`` (listing, snapshot) in place;
        False when the listing changed otherwise. The other entries are left for
        :meth:`_patch` (their loads may have changed too)."""
        grow = len(entries) - len(view.entries)
        if grow not in (1, -1) or view.engines or self._fabric is None:
            return False
        at = _first_moved(view.entries, entries)
        longer, shorter = (entries, view.entries) if grow == 1 else (view.entries, entries)
        if not _aligned(longer, shorter, at):
            return False
        if grow == 1:
            self._insert(view, self._fabric, entries[at], loads, at)
        else:
            self._remove(view, at)
        return True

    def _insert(self, view: _ModelView, fabric: Fabric, entry: WorkerEntry,
                loads: Mapping[str, WorkerLoad], at: int) -> None:
        name = entry.registration.name
        seen = _refreshed(None, entry, loads.get(name), fabric, view.model)
        view.entries.insert(at, entry)
        view.loads.insert(at, loads.get(name))
        view.names.insert(at, name)
        view.seen.insert(at, seen)
        view.index = None
        view.drained[seen.registration.role] += seen.held_out
        pos = int(view.counts[at - 1]) if at else 0
        view.counts = np.insert(view.counts, at, pos)
        if seen.worker is not None:
            view.counts[at:] += 1
            view.block_counts[entry.registration.block_tokens] += 1
            self._respliced(view, fabric, pos, 0, (seen.worker,))

    def _remove(self, view: _ModelView, at: int) -> None:
        seen = view.seen.pop(at)
        del view.entries[at], view.loads[at], view.names[at]
        view.index = None
        view.drained[seen.registration.role] -= seen.held_out
        pos = int(view.counts[at]) - 1
        view.counts = np.delete(view.counts, at)
        if seen.worker is not None:
            view.counts[at:] -= 1
            view.block_counts[seen.registration.block_tokens] -= 1
            assert self._fabric is not None
            self._respliced(view, self._fabric, pos, 1, ())

    def _respliced(self, view: _ModelView, fabric: Fabric, pos: int, removed: int,
                   added: tuple[Worker, ...]) -> None:
        """Splice the view's snapshot as :meth:`_build` would have built it anew."""
        snapshot = view.snapshot
        assert snapshot is not None and self._gpus is not None
        domains = domain_arrays(fabric.distance, added, self._gpus.first_gpus(added))
        snapshot = snapshot.spliced(pos, removed, added, domains)
        if view.pairings:
            snapshot = snapshot.with_pairs(preferred_pairs(view.pairings, snapshot.position))
        size = view.block_tokens or self.block_sizes.counted(view.model, view.block_counts)
        if size != snapshot.block_tokens:
            snapshot = dataclasses.replace(snapshot, block_tokens=size)
        view.snapshot = snapshot

    def _rebuild(self, view: _ModelView, fabric: Fabric, entries: Sequence[WorkerEntry],
                 loads: Mapping[str, WorkerLoad], model: str | None, kv_bytes: int,
                 pairings: Sequence[Any], engines: tuple[Worker, ...],
                 block_tokens: int | None) -> None:
        self._merge(view, fabric, entries, loads, model)
        view.pairings, view.kv_bytes = pairings, kv_bytes
        view.engines, view.block_tokens = engines, block_tokens
        view.snapshot = self._build(fabric, view, kv_bytes, pairings, model)

    def _patch(self, view: _ModelView, entries: Sequence[WorkerEntry],
               loads: Mapping[str, WorkerLoad]) -> bool:
        """Patch ``view`` to ``entries``; False when the worker set itself changed. A
        worker that started draining (or stopped: registered again) is spliced out of
        the snapshot (or back in), keeping its listing slot."""
        if len(entries) != len(view.seen) or view.snapshot is None:
            return False
        now_loads = list(map(loads.get, view.names))
        suspects = set(compress(count(), map(is_not, entries, view.entries)))
        suspects.update(compress(count(), map(is_not, now_loads, view.loads)))
        changed: dict[int, Worker] = {}
        for i in sorted(suspects):
            seen, reg = view.seen[i], entries[i].registration
            if reg is not seen.registration and reg != seen.registration:
                return False  # another worker in this slot, or re-registered
            if entries[i].draining != seen.draining:
                if view.engines or self._fabric is None:
                    return False  # (engines follow the listed workers: rebuilt)
                self._remove(view, i)  # (a later index: earlier positions do not move)
                self._insert(view, self._fabric, entries[i], loads, i)
                continue
            free, load = entries[i].free_blocks, _load_key(now_loads[i])
            seen.registration = reg
            if (free, load) == (seen.free_blocks, seen.load):
                continue
            seen.free_blocks, seen.load = free, load
            if seen.worker is not None:
                seen.worker = _worker(reg, free, load)
                changed[int(view.counts[i]) - 1] = seen.worker
        view.entries, view.loads = list(entries), now_loads
        if changed:
            view.snapshot = view.snapshot.updated(changed)
        return True

    @staticmethod
    def _patch_engines(view: _ModelView, engines: tuple[Worker, ...]) -> bool:
        """Patch the engine workers' load figures; False when the engine set changed."""
        old = view.engines
        if engines is old or engines == old:
            return True
        if len(engines) != len(old) or any(
                (a.id, a.role, a.gpus) != (b.id, b.role, b.gpus)
                for a, b in zip(engines, old, strict=True)):
            return False
        snapshot = view.snapshot
        assert snapshot is not None
        changed: dict[int, Worker] = {}
        for new, was in zip(engines, old, strict=True):
            pos = snapshot.position.get(new.id)
            if new is not was and pos is not None and snapshot.workers[pos] is was:
                changed[pos] = new  # (a listed worker of the same name keeps its slot)
        view.snapshot = snapshot.updated(changed) if changed else snapshot
        view.engines = engines
        return True

    @staticmethod
    def _merge(view: _ModelView, fabric: Fabric, entries: Sequence[WorkerEntry],
               loads: Mapping[str, WorkerLoad], model: str | None) -> None:
        """Take ``entries`` as the new listing, keeping what is known of unchanged names.

        Entries and loads identical (same objects) to the ones last seen under the same
        name keep their record as is; only the others are looked at in Python.
        """
        names = list(map(_NAME, entries))
        filler = len(view.entries)
        index = view.index if view.index is not None else dict(zip(view.names, count()))
        where = list(map(index.get, names, repeat(filler)))
        now_loads = list(map(loads.get, names))
        before = _gather([*view.entries, None], where)
        seen = _gather([*view.seen, None], where)
        changed = set(compress(count(), map(is_not, entries, before)))
        changed.update(compress(count(), map(is_not, now_loads,
                                             _gather([*view.loads, None], where))))
        for i in changed:
            seen[i] = _refreshed(seen[i], entries[i], now_loads[i], fabric, model)
        view.entries, view.loads, view.names, view.seen = list(entries), now_loads, names, seen
        view.index = dict(zip(names, count()))
        # (drains are few: the pass over every record runs in C)
        view.drained = Counter(s.registration.role for s in compress(seen, map(_HELD_OUT, seen)))
        view.counts = np.fromiter(accumulate(map(is_not, map(_WORKER, seen), repeat(None))),
                                  dtype=np.int64, count=len(seen))

    def _build(self, fabric: Fabric, view: _ModelView, kv_bytes: int,
               pairings: Sequence[Any], model: str | None) -> Snapshot:
        routable = list(compress(view.seen, map(is_not, map(_WORKER, view.seen), repeat(None))))
        workers: list[Worker] = list(map(_WORKER, routable))
        if view.engines:
            listed = set(map(_ID, workers))
            workers += [w for w in view.engines if w.id not in listed]
        view.block_counts = Counter(map(_BLOCK_TOKENS, map(_REGISTRATION, routable)))
        block_tokens = view.block_tokens or self.block_sizes.counted(model, view.block_counts)
        assert self._gpus is not None  # set with the fabric
        domains = domain_arrays(fabric.distance, workers, self._gpus.first_gpus(workers))
        pairs = preferred_pairs(pairings, set(map(_ID, workers)))
        return Snapshot(tuple(workers), domains, pairs, {}, block_tokens, kv_bytes)


def _replaced(seen: _Seen, entry: WorkerEntry) -> bool:
    """Whether ``entry`` is another registration than the one ``seen`` was made from, or
    its worker started draining or stopped (registered again): either way its record
    and its snapshot row are made anew (a splice)."""
    reg = entry.registration
    return (reg is not seen.registration and reg != seen.registration) or \
        entry.draining != seen.draining


def _first_moved(old: Sequence[WorkerEntry], new: Sequence[WorkerEntry]) -> int:
    """The first index where ``old`` and ``new`` list different workers (the length of
    the shorter one when it is a prefix of the other by name)."""
    for i in compress(count(), map(is_not, new, old)):  # entries that are not the same
        if new[i].registration.name != old[i].registration.name:
            return i
    return min(len(old), len(new))


def _aligned(longer: Sequence[WorkerEntry], shorter: Sequence[WorkerEntry], at: int) -> bool:
    """Whether ``longer`` is ``shorter`` with one more worker at ``at`` (by name; the
    entries that are not the same objects are few, and only those are looked at)."""
    tail = map(is_not, islice(longer, at + 1, None), islice(shorter, at, None))
    return all(longer[at + 1 + k].registration.name == shorter[at + k].registration.name
               for k in compress(count(), tail))


def _on_fabric(fabric: Fabric, engines: Sequence[Worker]) -> tuple[Worker, ...]:
    """The engine workers whose GPUs are all on ``fabric``."""
    return tuple(w for w in engines if all(g in fabric.known for g in w.gpus))


def _with_load(view: _ModelView, link_load: Mapping[str, int] | None) -> Snapshot:
    assert view.snapshot is not None
    if link_load:  # the kept snapshot has none: it changes with every transfer
        return view.snapshot.with_link_load(link_load)
    return view.snapshot


def _refreshed(old: _Seen | None, entry: WorkerEntry, load_now: WorkerLoad | None,
               fabric: Fabric, model: str | None) -> _Seen:
    """The record of a listing entry that is new or changed since ``old`` was made (a
    draining worker is kept, but not routable: no new request may use it)."""
    reg, free, load = entry.registration, entry.free_blocks, _load_key(load_now)
    if old is not None and not _replaced(old, entry):
        if (free, load) != (old.free_blocks, old.load) and old.worker is not None:
            old.worker = _worker(reg, free, load)
        old.registration, old.free_blocks, old.load = reg, free, load
        return old
    candidate = _routable(reg, fabric, model)
    worker = _worker(reg, free, load) if candidate and not entry.draining else None
    return _Seen(reg, free, load, worker, entry.draining, entry.draining and candidate)
