"""The immutable data every policy scores over: workers, the request, one scheduling cycle.

Policies import only :mod:`topology` (ARCHITECTURE.md), so the snapshot types live
here and :mod:`scheduler.router.snapshot` builds them from live state. Everything is
frozen; per-worker numbers are also kept as read-only numpy arrays (index = position
in :attr:`Snapshot.workers`) so that policies can score a thousand workers without a
Python loop per worker.
"""

from __future__ import annotations

import copy
import random
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from itertools import count, repeat
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from policies.contracts import PairCostModel

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Locality levels a snapshot knows for each worker, narrowest first.
DOMAIN_LEVELS = ("host", "nvlink_domain", "rack", "pod", "zone", "region")


class Role(StrEnum):
    """What a worker serves: the prefill phase, the decode phase, or both (aggregated)."""

    PREFILL = "prefill"
    DECODE = "decode"
    BOTH = "both"


class Stage(StrEnum):
    """Which side of a (prefill, decode) pair a scheduling profile is choosing."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True, slots=True)
class Worker:
    """One serving instance (an engine process over one or more GPUs) and its load.

    ``queued_tokens``: prompt tokens waiting for prefill; ``free_kv_blocks``: blocks
    it can allocate now (cached blocks nobody uses count as free, engines evict them);
    ``promised_kv_blocks``: blocks that requests already routed here will take once
    their KV lands (prefilling elsewhere now), not yet out of ``free_kv_blocks``;
    ``context_tokens``: the context tokens its running decodes read per step, summed
    over the sequences (a prefix that several of them share counts once per sequence,
    where ``free_kv_blocks`` holds it once); 0: not reported.
    """

    id: str
    role: Role
    gpus: tuple[str, ...]
    queued_tokens: int = 0
    running_requests: int = 0
    max_running_requests: int = 256
    free_kv_blocks: int = 0
    capacity_kv_blocks: int = 0
    prefill_tokens_per_s: float = 20_000.0
    #: Blocks the worker's prefix cache holds, for any request (SGLang's "tree size").
    cached_kv_blocks: int = 0
    promised_kv_blocks: int = 0
    context_tokens: int = 0

    @property
    def can_prefill(self) -> bool:
        """Whether the worker runs prefills (a decode worker may still prefill locally)."""
        return self.role is not Role.DECODE

    @property
    def can_decode(self) -> bool:
        """Whether the worker runs decodes."""
        return self.role is not Role.PREFILL


#: Per-worker arrays of a snapshot that load changes touch, and the Worker field each holds.
_LOAD_ARRAYS = (("queued", "queued_tokens"), ("running", "running_requests"),
                ("max_running", "max_running_requests"), ("free_kv", "free_kv_blocks"),
                ("capacity_kv", "capacity_kv_blocks"), ("promised_kv", "promised_kv_blocks"),
                ("context", "context_tokens"), ("prefill_rate", "prefill_tokens_per_s"))


_ID, _ROLE = attrgetter("id"), attrgetter("role")


def _frozen_array(values: Sequence[Any], dtype: type) -> Any:
    array: npt.NDArray[Any] = np.asarray(values, dtype=dtype)
    array.flags.writeable = False
    return array


def _frozen(array: npt.NDArray[Any]) -> Any:
    array.flags.writeable = False
    return array


def _frozen_column(workers: Sequence[Worker], attr: str, dtype: type) -> Any:
    """One Worker field of every worker as a read-only array."""
    return _frozen(np.fromiter(map(attrgetter(attr), workers), dtype=dtype,
                               count=len(workers)))


def _columns(workers: Sequence[Worker]) -> dict[str, Any]:
    """The per-worker arrays of a snapshot (load figures and role masks), read-only."""
    columns = {name: _frozen_column(workers, attr, np.float64 if name == "prefill_rate"
                                    else np.int64) for name, attr in _LOAD_ARRAYS}
    # Role is a str enum: str's own comparison runs in C (the enum's hash and __eq__ not)
    for name, other in (("prefill_mask", Role.DECODE.value), ("decode_mask", Role.PREFILL.value)):
        columns[name] = _frozen(np.fromiter(map(str.__ne__, map(_ROLE, workers), repeat(other)),
                                            dtype=np.bool_, count=len(workers)))
    return columns


def _spliced(array: npt.NDArray[Any], at: int, removed: int, added: npt.NDArray[Any]) -> Any:
    """``array`` with ``removed`` entries from ``at`` on replaced by ``added``, read-only."""
    return _frozen(np.concatenate((array[:at], added, array[at + removed:])))


def _grouped(pairs: Mapping[tuple[str, str], float]
             ) -> Mapping[str, tuple[tuple[str, float], ...]]:
    """Placement pairings grouped by prefill worker: id → ((decode id, weight), …)."""
    grouped: dict[str, list[tuple[str, float]]] = {}
    for (prefill, decode), weight in pairs.items():
        grouped.setdefault(prefill, []).append((decode, weight))
    return MappingProxyType({k: tuple(v) for k, v in grouped.items()})


#: Replaced workers a :class:`Workers` keeps beside its tuple before it makes a new one.
COMPACT_AFTER = 64


class Workers(Sequence[Worker]):
    """A snapshot's workers: a tuple, and the few workers replaced since it was made
    (load changes, :meth:`Snapshot.updated`). Replacing two workers of 100,000 then
    copies no tuple of all of them (~3 ms); reads by position look at the replacements
    first, and iterating or slicing makes the whole tuple once."""

    __slots__ = ("_base", "_over", "_whole")

    def __init__(self, base: tuple[Worker, ...], over: Mapping[int, Worker] | None = None
                 ) -> None:
        """``base`` with the workers at the positions of ``over`` replaced."""
        self._base = base
        self._over: Mapping[int, Worker] = over or {}
        self._whole: tuple[Worker, ...] | None = None if self._over else base

    def __len__(self) -> int:
        return len(self._base)

    @overload
    def __getitem__(self, index: int) -> Worker: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Worker, ...]: ...

    def __getitem__(self, index: int | slice) -> Worker | tuple[Worker, ...]:
        if isinstance(index, slice):
            return self.whole()[index]
        found = self._over.get(index if index >= 0 else index + len(self._base))
        return self._base[index] if found is None else found

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.whole())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Workers):
            return self.whole() == other.whole()
        return isinstance(other, tuple) and self.whole() == other

    def __hash__(self) -> int:
        return hash(self.whole())

    def __repr__(self) -> str:
        return f"Workers({self.whole()!r})"

    def whole(self) -> tuple[Worker, ...]:
        """Every worker, as one tuple (made once)."""
        if self._whole is None:
            items = list(self._base)
            for pos, worker in self._over.items():
                items[pos] = worker
            self._whole = tuple(items)
        return self._whole

    def spliced(self, at: int, removed: int, added: Sequence[Worker]) -> Workers:
        """These workers with ``removed`` from position ``at`` on replaced by ``added``
        (one list and one tuple made, whatever was replaced before)."""
        items = list(self._base)
        for pos, worker in self._over.items():
            items[pos] = worker
        items[at:at + removed] = added
        return Workers(tuple(items))

    def replaced(self, changed: Mapping[int, Worker]) -> Workers:
        """These workers with the ones at the positions of ``changed`` replaced."""
        over = {**self._over, **changed}
        if len(over) > COMPACT_AFTER:
            return Workers(Workers(self._base, over).whole())
        return Workers(self._base, over)


#: Splices a position map may stack (:class:`SplicedPositions`) before it is made one
#: dict again: a lookup walks the stack, a new dict touches every worker.
MAX_SPLICES = 32


class SplicedPositions(Mapping[str, int]):
    """The position map of a spliced snapshot (:meth:`Snapshot.spliced`): the parent's,
    with its ``removed`` positions from ``at`` on gone, ``added`` names there and the
    later positions moved. A worker joining 100,000 then builds no dict of them all
    (~15 ms); every :data:`MAX_SPLICES` splices the map is made whole again."""

    __slots__ = ("_added", "_at", "_end", "_len", "_parent", "_shift", "depth")

    def __init__(self, parent: Mapping[str, int], at: int, removed: int,
                 added: Sequence[str]) -> None:
        """The map of ``parent``'s snapshot spliced at ``at``."""
        self._parent = parent
        self._at, self._end = at, at + removed
        self._added = dict(zip(added, count(at)))
        self._shift = len(added) - removed
        self._len = len(parent) + self._shift
        self.depth: int = getattr(parent, "depth", 0) + 1

    def __getitem__(self, name: str) -> int:
        found = self._added.get(name)
        if found is not None:
            return found
        pos = self._parent[name]
        if pos < self._at:
            return pos
        if pos < self._end:
            raise KeyError(name)
        return pos + self._shift

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for name, pos in self._parent.items():
            if not self._at <= pos < self._end and name not in self._added:
                yield name
        yield from self._added


def _read_only(array: IntArray) -> IntArray:
    view: IntArray = np.asarray(array).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, slots=True)
class Splice:
    """How a snapshot came from another (:meth:`Snapshot.spliced`): ``removed`` workers
    at position ``at`` of the one with the position map ``parent`` replaced by
    ``added`` workers. Lets whoever keeps per-worker data for the parent patch it."""

    parent: Mapping[str, int]
    at: int
    removed: int
    added: int


@dataclass(frozen=True)
class Snapshot:
    """Cluster state for one or many scheduling cycles; never changes once built.

    ``domains`` maps a level of :data:`DOMAIN_LEVELS` to a per-worker domain id
    (``-1``: the worker has none at that level, e.g. no NVLink domain).
    ``preferred_pairs`` are placement pairings ``(prefill id, decode id) → weight``
    in [0, 1]; ``link_load`` counts transfers in flight per directional link id
    (:meth:`topology.distance.DistanceModel.path_links`).
    """

    workers: Sequence[Worker]
    domains: Mapping[str, IntArray] = field(default_factory=dict)
    preferred_pairs: Mapping[tuple[str, str], float] = field(default_factory=dict)
    link_load: Mapping[str, int] = field(default_factory=dict)
    block_tokens: int = 512
    kv_bytes_per_token: int = 327_680
    position: Mapping[str, int] = field(init=False)
    #: ``preferred_pairs`` grouped by prefill worker: id → ((decode id, weight), …).
    partners: Mapping[str, tuple[tuple[str, float], ...]] = field(init=False, repr=False,
                                                                 compare=False)
    queued: IntArray = field(init=False, repr=False, compare=False)
    running: IntArray = field(init=False, repr=False, compare=False)
    max_running: IntArray = field(init=False, repr=False, compare=False)
    free_kv: IntArray = field(init=False, repr=False, compare=False)
    capacity_kv: IntArray = field(init=False, repr=False, compare=False)
    promised_kv: IntArray = field(init=False, repr=False, compare=False)
    context: IntArray = field(init=False, repr=False, compare=False)
    prefill_rate: FloatArray = field(init=False, repr=False, compare=False)
    prefill_mask: BoolArray = field(init=False, repr=False, compare=False)
    decode_mask: BoolArray = field(init=False, repr=False, compare=False)
    #: How this snapshot was spliced from another (None: built from its workers).
    origin: Splice | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every per-worker pass below runs in C (map over attrgetter, np.fromiter): a
        # snapshot of 10,000 workers is built in a few milliseconds when workers come
        # and go, so that the route after the change does not stall the service.
        put = object.__setattr__
        if not isinstance(self.workers, Workers):
            put(self, "workers", Workers(tuple(self.workers)))
        ws = self.workers
        put(self, "position", MappingProxyType(dict(zip(map(_ID, ws), count()))))
        put(self, "domains", MappingProxyType({k: _read_only(v) for k, v in self.domains.items()}))
        put(self, "preferred_pairs", MappingProxyType(dict(self.preferred_pairs)))
        put(self, "partners", _grouped(self.preferred_pairs))
        put(self, "link_load", MappingProxyType(dict(self.link_load)))
        for name, column in _columns(ws).items():
            put(self, name, column)
        put(self, "origin", None)

    def updated(self, changed: Mapping[int, Worker]) -> Snapshot:
        """This snapshot with the workers at the given positions replaced by new load
        figures (same id, role and GPUs): equal to a full rebuild, but only the
        per-worker arrays are copied and patched. Anything else changed: ValueError."""
        workers = self.workers
        for pos, worker in changed.items():
            old = workers[pos]
            if (worker.id, worker.role, worker.gpus) != (old.id, old.role, old.gpus):
                raise ValueError(f"worker {old.id!r} changed identity, role or GPUs; "
                                 "build a new snapshot")
        new = copy.copy(self)
        put = object.__setattr__
        assert isinstance(workers, Workers)
        put(new, "workers", workers.replaced(changed))
        for name, attr in _LOAD_ARRAYS:
            values = getattr(self, name)
            now = [getattr(worker, attr) for worker in changed.values()]
            if values[list(changed)].tolist() == now:
                continue  # this figure of these workers did not change: the array is shared
            values = values.copy()
            values[list(changed)] = now
            values.flags.writeable = False
            put(new, name, values)
        return new

    def spliced(self, at: int, removed: int, added: Sequence[Worker],
                domains: Mapping[str, IntArray]) -> Snapshot:
        """This snapshot with the ``removed`` workers from position ``at`` on replaced by
        ``added`` (``domains``: their ids at every level of :attr:`domains`), as when a
        worker joins or leaves: equal to building it anew, but the per-worker arrays are
        spliced in C instead of read from every worker again. Placement pairings naming
        a removed worker are dropped (:meth:`with_pairs` sets new ones)."""
        old = self.workers
        assert isinstance(old, Workers)
        workers = old.spliced(at, removed, added)
        new = copy.copy(self)
        put = object.__setattr__
        put(new, "workers", workers)
        if getattr(self.position, "depth", 0) < MAX_SPLICES:
            put(new, "position", SplicedPositions(self.position, at, removed,
                                                  [w.id for w in added]))
        else:
            put(new, "position", MappingProxyType(dict(zip(map(_ID, workers), count()))))
        put(new, "origin", Splice(self.position, at, removed, len(added)))
        put(new, "domains", MappingProxyType({
            level: _read_only(_spliced(ids, at, removed, domains[level]))
            for level, ids in self.domains.items()}))
        for name, column in _columns(added).items():
            put(new, name, _spliced(getattr(self, name), at, removed, column))
        if removed and self.preferred_pairs:
            gone = {self.workers[i].id for i in range(at, at + removed)}
            return new.with_pairs({pair: weight for pair, weight in self.preferred_pairs.items()
                                   if not gone.intersection(pair)})
        return new

    def with_pairs(self, preferred_pairs: Mapping[tuple[str, str], float]) -> Snapshot:
        """This snapshot with other placement pairings (workers shared)."""
        new = copy.copy(self)
        object.__setattr__(new, "preferred_pairs", MappingProxyType(dict(preferred_pairs)))
        object.__setattr__(new, "partners", _grouped(preferred_pairs))
        return new

    def with_link_load(self, link_load: Mapping[str, int]) -> Snapshot:
        """This snapshot with other in-flight transfer counts per link (workers shared)."""
        new = copy.copy(self)
        object.__setattr__(new, "link_load", MappingProxyType(dict(link_load)))
        return new

    def worker(self, worker_id: str) -> Worker | None:
        """The worker with this id, or ``None``."""
        pos = self.position.get(worker_id)
        return None if pos is None else self.workers[pos]

    def same_domain(self, level: str, a: str, b: str) -> bool:
        """Whether workers ``a`` and ``b`` share a domain at ``level`` (unknown: no)."""
        ids = self.domains.get(level)
        pa, pb = self.position.get(a), self.position.get(b)
        if ids is None or pa is None or pb is None:
            return False
        return bool(ids[pa] >= 0 and ids[pa] == ids[pb])


@dataclass(frozen=True, slots=True)
class RequestView:
    """What policies know of a request: its block chain and routing hints (never text)."""

    id: str
    block_hashes: tuple[int, ...]
    prompt_tokens: int
    model: str | None = None
    session: str | None = None
    prefill_worker: str | None = None
    decode_worker: str | None = None

    @property
    def blocks(self) -> int:
        """Number of (full or partial) KV blocks of the prompt that the chain names."""
        return len(self.block_hashes)


@dataclass(frozen=True)
class CycleContext:
    """Everything one scheduling cycle may read; handlers derive per-stage copies.

    ``cached`` holds, per snapshot worker, how many leading blocks of the request's
    chain it already holds (from the prefix index, read before the cycle).
    ``sequence`` counts the router's decisions (round-robin uses it); ``seed`` makes
    random choices repeatable; ``session_pair`` is the (prefill, decode) pair the
    request's session used last. ``stage`` and ``peer`` are set by a two-stage
    handler: the side being chosen and the worker already chosen on the other side.
    """

    request: RequestView
    snapshot: Snapshot
    cached: IntArray
    cost: PairCostModel
    seed: int = 0
    sequence: int = 0
    session_pair: tuple[str, str] | None = None
    stage: Stage | None = None
    peer: Worker | None = None

    def cached_of(self, worker: Worker) -> int:
        """Leading blocks of the request that ``worker`` holds."""
        return int(self.cached[self.snapshot.position[worker.id]])

    def rng(self) -> random.Random:
        """A generator seeded by the cycle's seed, request and stage (repeatable)."""
        key = f"{self.seed}/{self.request.id}/{self.sequence}/{self.stage}".encode()
        return random.Random(zlib.crc32(key))

    def for_stage(self, stage: Stage, peer: Worker | None = None) -> CycleContext:
        """A copy of this context for one side of the pair."""
        if type(self) is not CycleContext:  # a subclass may add fields
            return replace(self, stage=stage, peer=peer)
        # the fields by position: dataclasses.replace looks every field up (~4 us a call)
        return CycleContext(self.request, self.snapshot, self.cached, self.cost, self.seed,
                            self.sequence, self.session_pair, stage, peer)

    def positions(self, workers: Sequence[Worker]) -> IntArray:
        """Snapshot positions of ``workers`` (for array lookups)."""
        pos = self.snapshot.position
        return np.fromiter((pos[w.id] for w in workers), dtype=np.int64, count=len(workers))
