"""Live snapshots for the route path: built once, then patched between requests.

A route request needs a :class:`~policies.snapshot.Snapshot` of every routable worker
with its free KV blocks and reserved load. Between two requests usually only the
chosen pair changed (two free-block counts, two loads), so :class:`LiveSnapshots`
keeps, per model, the last listing it saw and the snapshot built from it, and
compares the new listing entry by entry: unchanged workers keep their
:class:`~policies.snapshot.Worker` objects, changed loads patch the snapshot's
arrays (:meth:`Snapshot.updated`), and anything structural (a worker registered,
gone, or re-registered differently; a new fabric, placement or model size) builds
the snapshot anew. Rebuilding 256 workers per request cost more than the policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, count
from operator import is_not
from typing import Any

from api.routing import BLOCK_TOKENS, Fabric, preferred_pairs
from policies.snapshot import Role, Snapshot, Worker
from scheduler.router.snapshot import domain_arrays
from scheduler.state.base import WorkerEntry
from scheduler.state.reservations import WorkerLoad
from scheduler.transfer.plan import WorkerRegistration

#: Distinct models whose snapshots are kept (past this, the cache starts over).
MAX_MODELS = 64
#: A worker's concurrent-request limit when it has no declared capacity.
DEFAULT_MAX_RUNNING = 256
_ROLES = {role.value: role for role in Role}
#: (queued tokens, running requests, max requests) of a worker; None: no capacity set.
LoadKey = tuple[int, int, int] | None


@dataclass(slots=True)
class _Seen:
    """One listing entry as last seen, and its Worker (None: not routable here)."""

    registration: WorkerRegistration
    free_blocks: int
    load: LoadKey
    worker: Worker | None
    position: int  # in the snapshot; -1 when not routable


@dataclass
class _ModelView:
    """The last listing seen for one model and the snapshot built from it."""

    seen: list[_Seen] = field(default_factory=list)
    #: The listing's entry and load objects as last handed out, and the names. The
    #: memory store hands out the same objects until they change, so an identity
    #: sweep (in C, via ``map``) finds the few entries worth a closer look.
    entries: list[WorkerEntry] = field(default_factory=list)
    loads: list[WorkerLoad | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    snapshot: Snapshot | None = None
    pairings: Any = None
    kv_bytes: int = 0
    #: Engine instances (from the engine registry) after the listing's workers, and the
    #: block size the snapshot was built with.
    engines: tuple[Worker, ...] = ()
    block_tokens: int = BLOCK_TOKENS


def _load_key(load: WorkerLoad | None) -> LoadKey:
    return None if load is None else (load.tokens, load.requests, load.max_requests)


def _routable(reg: WorkerRegistration, fabric: Fabric, model: str | None) -> bool:
    serves = model is None or reg.model is None or reg.model == model
    return serves and bool(reg.gpus) and all(g in fabric.known for g in reg.gpus)


def _worker(reg: WorkerRegistration, free_blocks: int, load: LoadKey) -> Worker:
    tokens, requests, max_requests = load or (0, 0, 0)
    return Worker(reg.name, _ROLES[reg.role], reg.gpus, tokens, requests,
                  max_requests or DEFAULT_MAX_RUNNING, free_blocks, reg.layout.num_blocks)


class LiveSnapshots:
    """Snapshots of the live workers, per model, patched while the worker set holds."""

    def __init__(self) -> None:
        self._fabric: Fabric | None = None
        self._views: dict[str | None, _ModelView] = {}
        self._domains: tuple[Any, dict[str, Any]] | None = None

    def snapshot(self, fabric: Fabric, entries: Sequence[WorkerEntry],
                 loads: Mapping[str, WorkerLoad], model: str | None, *, kv_bytes: int,
                 pairings: Sequence[Any], link_load: Mapping[str, int] | None = None,
                 engines: Sequence[Worker] = (), block_tokens: int = BLOCK_TOKENS
                 ) -> Snapshot:
        """The snapshot of ``entries`` (with their reserved ``loads``) routable for
        ``model``; ``pairings`` are the placement's, kept where both sides are
        registered under the placement's instance ids; ``link_load``: transfers in
        flight per shared link. ``engines`` are engine instances already built as
        workers (load merged), placed after the listing's workers; ``block_tokens`` the
        tokens per block prompts are hashed with."""
        if fabric is not self._fabric or len(self._views) > MAX_MODELS:
            self._fabric, self._views = fabric, {}
        view = self._views.setdefault(model, _ModelView())
        engines = tuple(w for w in engines if all(g in fabric.known for g in w.gpus))
        if (view.snapshot is None or pairings is not view.pairings
                or kv_bytes != view.kv_bytes or block_tokens != view.block_tokens
                or not self._patch(view, entries, loads)
                or not self._patch_engines(view, engines)):
            self._rebuild(view, fabric, entries, loads, model)
            view.pairings, view.kv_bytes = pairings, kv_bytes
            view.engines, view.block_tokens = engines, block_tokens
            view.snapshot = self._build(fabric, view, kv_bytes, pairings)
        if link_load:  # the kept snapshot has none: it changes with every transfer
            return view.snapshot.with_link_load(link_load)
        return view.snapshot

    @staticmethod
    def _patch(view: _ModelView, entries: Sequence[WorkerEntry],
               loads: Mapping[str, WorkerLoad]) -> bool:
        """Patch ``view`` to ``entries``; False when the worker set itself changed."""
        if len(entries) != len(view.seen) or view.snapshot is None:
            return False
        now_loads = list(map(loads.get, view.names))
        suspects = set(compress(count(), map(is_not, entries, view.entries)))
        suspects.update(compress(count(), map(is_not, now_loads, view.loads)))
        view.entries, view.loads = list(entries), now_loads
        changed: dict[int, Worker] = {}
        for i in suspects:
            seen, reg = view.seen[i], entries[i].registration
            if reg is not seen.registration and reg != seen.registration:
                return False  # another worker in this slot, or re-registered
            free, load = entries[i].free_blocks, _load_key(now_loads[i])
            seen.registration = reg
            if (free, load) == (seen.free_blocks, seen.load):
                continue
            seen.free_blocks, seen.load = free, load
            if seen.worker is not None:
                seen.worker = _worker(reg, free, load)
                changed[seen.position] = seen.worker
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
    def _rebuild(view: _ModelView, fabric: Fabric, entries: Sequence[WorkerEntry],
                 loads: Mapping[str, WorkerLoad], model: str | None) -> None:
        view.entries = list(entries)
        view.names = [entry.registration.name for entry in entries]
        view.loads = list(map(loads.get, view.names))
        view.seen, position = [], 0
        for entry, load_now in zip(entries, view.loads, strict=True):
            reg, load = entry.registration, _load_key(load_now)
            worker = _worker(reg, entry.free_blocks, load) \
                if _routable(reg, fabric, model) else None
            view.seen.append(_Seen(reg, entry.free_blocks, load, worker,
                                   position if worker is not None else -1))
            position += worker is not None

    def _build(self, fabric: Fabric, view: _ModelView, kv_bytes: int,
               pairings: Sequence[Any]) -> Snapshot:
        listed = {s.worker.id for s in view.seen if s.worker is not None}
        workers = [s.worker for s in view.seen if s.worker is not None]
        workers += [w for w in view.engines if w.id not in listed]
        key = (id(fabric), tuple((w.id, w.gpus) for w in workers))
        if self._domains is None or self._domains[0] != key:
            self._domains = (key, domain_arrays(fabric.distance, workers))
        return Snapshot(tuple(workers), self._domains[1], preferred_pairs(pairings, workers),
                        {}, view.block_tokens, kv_bytes)
