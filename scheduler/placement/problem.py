"""The prepared placement instance: candidate instances, the locality tree and its costs.

Preparation turns a :class:`PlacementRequest` into plain arrays the solver, the
heuristics and the validator all share (none of them re-derives anything):

* **Candidates.** A TP group must sit inside one NVLink domain (a host, or a
  multi-host NVLink domain). Each domain's free GPUs, in order, are cut into
  consecutive chunks of each TP size, so the candidate count stays linear in the GPU
  count; groups of the current placement are added as they are so that keeping them is
  possible. Overlapping candidates (two TP sizes) are kept apart by per-GPU constraints.
* **Locality tree.** NVLink domain → rack → pod → zone → cluster. A KV transfer between
  two instances costs what the fabric charges for a pair whose first shared node is
  their lowest common ancestor; ``Node.cost_ms`` is that cost, measured with the
  DistanceModel on a rank-aligned representative pair (same local GPU index, so a
  rail-optimised fabric keeps it on one rail).
* **Traffic.** Every request's prompt KV moves once from its prefill to its decode
  instance; each prefill instance emits ``rate / P`` requests/s, each decode instance
  takes ``rate / D``. In integer *units*, a prefill supplies ``D`` and a decode
  demands ``P``; one unit is ``rate / (P·D)`` requests/s.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from scheduler.capacity import instances_needed
from scheduler.kv import kv_bytes_per_token_per_gpu
from scheduler.models_config import ModelShape, load_models
from scheduler.placement.request import PlacementRequest
from scheduler.placement.result import Role
from topology.distance import DistanceModel
from topology.errors import InputError, NotFoundError
from topology.spec import FabricSpec

IntArray = npt.NDArray[np.int64]
ROLES: tuple[Role, Role] = ("prefill", "decode")
#: Tree levels, finest first.
LEVELS = ("domain", "rack", "pod", "zone", "cluster")


@dataclass(frozen=True)
class LevelNames:
    """Names of zones, pods, racks, NVLink domains and hosts in fabric order — the order
    the DistanceModel's ``zone_of`` / ``pod_of`` / ``rack_of`` / ``nvd_of`` / ``host_of``
    arrays index."""

    zones: tuple[str, ...]
    pods: tuple[str, ...]
    racks: tuple[str, ...]
    domains: tuple[str, ...]
    hosts: tuple[str, ...]

    @classmethod
    def of(cls, spec: FabricSpec) -> LevelNames:
        """The names of ``spec``."""
        return cls(zones=tuple(z.name for z in spec.zones), pods=tuple(p.name for p in spec.pods),
                   racks=tuple(r.name for r in spec.racks),
                   domains=tuple(d.name for d in spec.nvlink_domains),
                   hosts=tuple(h.name for h in spec.hosts))


@dataclass(frozen=True)
class Domain:
    """An NVLink domain (a host, or hosts sharing an NVSwitch fabric) and its free GPUs."""

    name: str
    gpus: tuple[int, ...]
    free: tuple[int, ...]
    rack: int
    pod: int
    zone: int


@dataclass(frozen=True)
class Candidate:
    """A possible instance: ``gpus`` (indices) inside domain ``domain``."""

    index: int
    gpus: tuple[int, ...]
    domain: int
    roles: frozenset[Role]
    slot: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class Node:
    """A node of the locality tree with the cost of a transfer whose pair meets here."""

    index: int
    level: str
    name: str
    parent: int
    cost_ms: float
    capacity_gb_per_s: float | None


@dataclass(frozen=True)
class CurrentInstance:
    """An instance of the placement in force, and the candidate that keeps it (if any)."""

    id: str
    role: Role
    gpus: tuple[int, ...]
    candidate: int | None


@dataclass(frozen=True)
class Problem:
    """A prepared placement instance (see the module docstring)."""

    dm: DistanceModel
    names: LevelNames
    request: PlacementRequest
    model: ModelShape
    prefill: int
    decode: int
    rate_rps: float
    bytes_per_rank: int
    domains: tuple[Domain, ...]
    candidates: tuple[Candidate, ...]
    nodes: tuple[Node, ...]
    chains: tuple[tuple[int, ...], ...]
    available: npt.NDArray[np.bool_]
    pins: dict[Role, frozenset[int]]
    current: tuple[CurrentInstance, ...] = ()
    zone_quota: dict[int, tuple[int, int]] | None = None
    notes: tuple[str, ...] = ()

    @property
    def tp(self) -> dict[Role, int]:
        """TP size of each role."""
        return {"prefill": self.request.tp_prefill, "decode": self.request.tp_decode}

    @property
    def request_bytes(self) -> int:
        """KV bytes one request moves, all ranks together."""
        return self.bytes_per_rank * self.request.tp_prefill

    @property
    def unit_gb_per_s(self) -> float:
        """GB/s carried by one traffic unit (``rate / (P·D)`` requests/s)."""
        return self.rate_rps / (self.prefill * self.decode) * self.request_bytes / 1e9

    def restrict(self, keep: Iterable[int], prefill: int, decode: int) -> Problem:
        """The sub-instance over candidates ``keep`` carrying its share of the traffic
        (pins outside it are left to the other parts)."""
        kept = [self.candidates[i] for i in sorted(set(keep))]
        renumber = {c.index: i for i, c in enumerate(kept)}
        candidates = tuple(replace(c, index=renumber[c.index]) for c in kept)
        current = tuple(replace(c, candidate=renumber.get(c.candidate))
                        if c.candidate is not None else c for c in self.current)
        inside = {g for c in kept for g in c.gpus}
        pins = {role: frozenset(gpus & inside) for role, gpus in self.pins.items()}
        return replace(self, candidates=candidates, current=current, prefill=prefill,
                       decode=decode, rate_rps=self.rate_rps * prefill / self.prefill,
                       chains=tuple(self.chains[c.index] for c in kept), zone_quota=None,
                       pins=pins)


def prepare(request: PlacementRequest, dm: DistanceModel | None = None) -> Problem:
    """Check a request and build its :class:`Problem` (errors in operator terms)."""
    _check_request(request)
    dm = dm or DistanceModel(request.fabric)
    names = LevelNames.of(dm.spec)
    model = request.model or load_models().get(request.workload.model)
    available = _available(dm, request.exclude)
    domains = _domains(dm, names, available)
    _check_tp_divides(request, domains)
    prefill, decode, notes = _counts(request, model, dm)
    zone_quota = _zone_quota(dm, request, prefill, decode)
    if zone_quota is not None:
        prefill, decode = prefill * len(zone_quota), decode * len(zone_quota)
    per_rank = kv_bytes_per_token_per_gpu(model, request.tp_prefill) * round(
        request.workload.input_tokens_mean)
    builder = _CandidateBuilder(dm, request, domains)
    candidates, current = builder.build()
    nodes, chains = _TreeBuilder(dm, names, domains, per_rank,
                                 request.tp_prefill).build(candidates)
    return Problem(dm=dm, names=names, request=request, model=model, prefill=prefill, decode=decode,
                   rate_rps=request.workload.rate_rps, bytes_per_rank=per_rank,
                   domains=domains, candidates=candidates, nodes=nodes, chains=chains,
                   available=available, pins=builder.pins, current=current,
                   zone_quota=zone_quota, notes=tuple(notes))


# --- request checks --------------------------------------------------------------------


def _check_request(request: PlacementRequest) -> None:
    for label, tp in (("prefill", request.tp_prefill), ("decode", request.tp_decode)):
        if tp < 1:
            raise InputError(f"{label} TP size must be at least 1, got {tp}")
    for label, count in (("prefill", request.prefill), ("decode", request.decode)):
        if count is not None and count < 1:
            raise InputError(f"{label} instance count must be at least 1, got {count}")
    share = request.failure.max_rack_share
    if share is not None and not 0 < share <= 1:
        raise InputError(f"max rack share must be in (0, 1], got {share}")
    if request.options.time_limit_s <= 0:
        raise InputError(f"time limit must be positive, got {request.options.time_limit_s}")


def _check_tp_divides(request: PlacementRequest, domains: tuple[Domain, ...]) -> None:
    sizes = sorted({len(d.gpus) for d in domains})
    for label, tp in (("prefill", request.tp_prefill), ("decode", request.tp_decode)):
        if sizes and not any(size % tp == 0 for size in sizes):
            fits = sorted({t for size in sizes for t in range(1, size + 1) if size % t == 0})
            raise InputError(
                f"{label} TP {tp} divides no NVLink domain of this fabric (domains have "
                f"{', '.join(map(str, sizes))} GPUs); TP sizes that fit: "
                f"{', '.join(map(str, fits))}")


def _counts(request: PlacementRequest, model: ModelShape,
            dm: DistanceModel) -> tuple[int, int, list[str]]:
    """Instance counts: the caller's, or capacity sizing of the workload."""
    if request.prefill is not None and request.decode is not None:
        return request.prefill, request.decode, ["instance counts given by the caller"]
    gpu_type = request.gpu_type or _gpu_type(dm)
    try:
        sizing = instances_needed(request.workload, model, gpu_type, request.tp_prefill,
                                  request.tp_decode)
    except NotFoundError as exc:
        raise InputError(f"cannot size the workload: {exc}; name the GPU type (--gpu-type) "
                         "or give the instance counts (--prefill, --decode)") from exc
    prefill = request.prefill or sizing.prefill_instances
    decode = request.decode or sizing.decode_instances
    return prefill, decode, [f"capacity sizing on {sizing.gpu_type}: {prefill} prefill, "
                             f"{decode} decode instance(s)"]


def _gpu_type(dm: DistanceModel) -> str:
    counts = Counter(host.gpu_type for host in dm.spec.hosts)
    return counts.most_common(1)[0][0] if counts else "unknown"


def _zone_quota(dm: DistanceModel, request: PlacementRequest, prefill: int,
                decode: int) -> dict[int, tuple[int, int]] | None:
    if not request.failure.zone_independent:
        return None
    return {z: (prefill, decode) for z in range(len(dm.spec.zones))}


# --- GPUs, domains and candidates --------------------------------------------------------


def resolve_target(dm: DistanceModel, name: str) -> IntArray:
    """GPU indices named by a GPU, host, rack, pod, zone or NVLink-domain name."""
    names = LevelNames.of(dm.spec)
    for level, owner in ((names.zones, dm.zone_of), (names.pods, dm.pod_of),
                         (names.racks, dm.rack_of), (names.domains, dm.nvd_of),
                         (names.hosts, dm.host_of)):
        if name in level:
            return np.flatnonzero(owner == level.index(name)).astype(np.int64)
    try:
        return np.array([dm.index(name)], dtype=np.int64)
    except NotFoundError:
        raise NotFoundError("GPU, host, rack, pod, zone or NVLink domain", name) from None


def _available(dm: DistanceModel, exclude: Iterable[str]) -> npt.NDArray[np.bool_]:
    available = np.ones(len(dm.names), dtype=bool)
    for name in exclude:
        available[resolve_target(dm, name)] = False
    return available


def _domains(dm: DistanceModel, names: LevelNames,
             available: npt.NDArray[np.bool_]) -> tuple[Domain, ...]:
    """NVLink domains in fabric order: multi-host domains, else one per host."""
    multi = len(names.domains)
    key = np.where(dm.nvd_of >= 0, dm.nvd_of, multi + dm.host_of)
    domains = []
    for k in dict.fromkeys(key.tolist()):
        members = np.flatnonzero(key == k)
        first = int(members[0])
        name = names.domains[k] if k < multi else names.hosts[int(dm.host_of[first])]
        domains.append(Domain(
            name=name, gpus=tuple(int(g) for g in members),
            free=tuple(int(g) for g in members if available[g]),
            rack=int(dm.rack_of[first]), pod=int(dm.pod_of[first]),
            zone=int(dm.zone_of[first])))
    return tuple(domains)


class _CandidateBuilder:
    """Cuts domains into TP groups and maps the current placement and role rules."""

    def __init__(self, dm: DistanceModel, request: PlacementRequest,
                 domains: tuple[Domain, ...]) -> None:
        self.dm, self.request, self.domains = dm, request, domains
        self.groups: dict[tuple[int, ...], set[Role]] = {}
        self.domain_of: dict[tuple[int, ...], int] = {}
        self.pins: dict[Role, frozenset[int]] = {"prefill": frozenset(), "decode": frozenset()}

    def build(self) -> tuple[tuple[Candidate, ...], tuple[CurrentInstance, ...]]:
        """Candidates with their allowed roles, and the current instances mapped."""
        tp: dict[Role, int] = {"prefill": self.request.tp_prefill,
                               "decode": self.request.tp_decode}
        for d, domain in enumerate(self.domains):
            for role in ROLES:
                for start in range(0, len(domain.free) - tp[role] + 1, tp[role]):
                    self._add(domain.free[start:start + tp[role]], d, role)
        found = self._current(tp)
        forbidden = self._rules()
        candidates: list[Candidate] = []
        for gpus, roles in self.groups.items():
            allowed = frozenset(r for r in roles if not forbidden[r] & set(gpus))
            if allowed:
                local = tuple(int(self.dm.local_of[g]) for g in gpus)
                candidates.append(Candidate(len(candidates), gpus, self.domain_of[gpus],
                                            allowed, local))
        index = {c.gpus: c.index for c in candidates}
        current = tuple(replace(c, candidate=index.get(c.gpus)) for c in found)
        return tuple(candidates), current

    def _add(self, gpus: tuple[int, ...], domain: int, role: Role) -> None:
        self.groups.setdefault(gpus, set()).add(role)
        self.domain_of[gpus] = domain

    def _current(self, tp: dict[Role, int]) -> list[CurrentInstance]:
        placement = self.request.current
        if placement is None:
            return []
        free_domain = {g: d for d, dom in enumerate(self.domains) for g in dom.free}
        found = []
        for instance in placement.instances:
            gpus = tuple(self.dm.index(name) for name in instance.gpus)
            homes = {free_domain.get(g, -1) for g in gpus}
            keepable = len(homes) == 1 and -1 not in homes and len(gpus) == tp[instance.role]
            if keepable:
                self._add(gpus, homes.pop(), instance.role)
            found.append(CurrentInstance(instance.id, instance.role, gpus, None))
        return found

    def _rules(self) -> dict[Role, set[int]]:
        forbidden: dict[Role, set[int]] = {"prefill": set(), "decode": set()}
        pinned: dict[Role, set[int]] = {"prefill": set(), "decode": set()}
        for rule in self.request.rules:
            gpus = {int(g) for g in resolve_target(self.dm, rule.target)}
            (pinned if rule.kind == "pin" else forbidden)[rule.role] |= gpus
        for role, other in (("prefill", "decode"), ("decode", "prefill")):
            forbidden[role] |= pinned[other]  # type: ignore[index]
        free = {g for dom in self.domains for g in dom.free}
        self.pins = {role: frozenset(pinned[role] & free) for role in ROLES}
        return forbidden


# --- the locality tree ------------------------------------------------------------------


class _TreeBuilder:
    """Builds the tree's nodes and, per candidate, its chain of node indices (finest
    first)."""

    def __init__(self, dm: DistanceModel, names: LevelNames, domains: tuple[Domain, ...],
                 per_rank: int, tp: int) -> None:
        self.dm, self.names, self.domains = dm, names, domains
        self.per_rank, self.tp = per_rank, tp
        self.keys: dict[tuple[str, int], int] = {}
        self.members: dict[int, list[int]] = {}  # node -> domain indices below it
        self.parent: dict[int, int] = {}

    def build(self, candidates: tuple[Candidate, ...]) -> tuple[tuple[Node, ...],
                                                                tuple[tuple[int, ...], ...]]:
        """Nodes in index order and each candidate's chain of node indices."""
        domain_chain = [self._chain(d, dom) for d, dom in enumerate(self.domains)]
        nodes = [self._node(i, level, ident) for (level, ident), i in self.keys.items()]
        nodes.sort(key=lambda n: n.index)
        nodes = self._monotone(nodes)
        return tuple(nodes), tuple(domain_chain[c.domain] for c in candidates)

    def _chain(self, d: int, domain: Domain) -> tuple[int, ...]:
        idents = (("domain", d), ("rack", domain.rack), ("pod", domain.pod),
                  ("zone", domain.zone), ("cluster", 0))
        chain = [self.keys.setdefault(ident, len(self.keys)) for ident in idents]
        for child, parent in itertools.pairwise(chain):
            self.parent[child] = parent
        for node in chain:
            self.members.setdefault(node, []).append(d)
        return tuple(chain)

    def _node(self, index: int, level: str, ident: int) -> Node:
        names = {"rack": self.names.racks, "pod": self.names.pods, "zone": self.names.zones}
        if level == "domain":
            name = self.domains[ident].name
        else:
            name = names[level][ident] if level in names else "cluster"
        return Node(index, level, name, self.parent.get(index, -1),
                    self._cost(level, self.members[index]), self._capacity(level, ident))

    def _cost(self, level: str, members: list[int]) -> float:
        """ms to move one request's KV between a rank-aligned pair meeting at this node."""
        dm = self.dm
        gpus = self.domains[members[0]].gpus
        if level == "domain":
            a, b = gpus[0], gpus[min(self.tp, len(gpus) - 1)]
        else:
            other = [m for m in members if self._child_key(level, m) !=
                     self._child_key(level, members[0])]
            if not other:
                return 0.0
            a = gpus[0]
            peers = self.domains[other[0]].gpus
            same = [g for g in peers if dm.local_of[g] == dm.local_of[a]]
            b = same[0] if same else peers[0]
        return dm.pair(a, b).transfer_time_s(self.per_rank) * 1e3

    def _child_key(self, level: str, d: int) -> int:
        dom = self.domains[d]
        return {"rack": d, "pod": dom.rack, "zone": dom.pod, "cluster": dom.zone}[level]

    def _capacity(self, level: str, ident: int) -> float | None:
        """Uplink GB/s (one direction) of the node; None where nothing is shared."""
        dm = self.dm
        if level == "pod":
            gpus = np.flatnonzero(dm.pod_of == ident)
            leaves = np.unique(dm.leaf_of[gpus])
            leaf_total = float(sum(dm.leaf_up[np.flatnonzero(dm.leaf_of == leaf)[0]]
                                   for leaf in leaves if leaf >= 0)) or float("inf")
            return min(float(dm.pod_up[gpus[0]]), leaf_total)
        if level == "zone":
            return float(dm.zone_up[np.flatnonzero(dm.zone_of == ident)[0]])
        if level == "rack":
            return self._rack_capacity(ident)
        return None

    def _rack_capacity(self, rack: int) -> float | None:
        """A rack with its own ToR leaves shares their uplinks; rail leaves span racks."""
        dm = self.dm
        leaves = set(np.unique(dm.leaf_of[dm.rack_of == rack]).tolist())
        outside = set(np.unique(dm.leaf_of[dm.rack_of != rack]).tolist())
        if not leaves or -1 in leaves or leaves & outside:
            return None
        return float(sum(dm.leaf_up[np.flatnonzero(dm.leaf_of == leaf)[0]] for leaf in leaves))

    def _monotone(self, nodes: list[Node]) -> list[Node]:
        """A parent never costs less than a child (a single-child node costs its child)."""
        costs = [n.cost_ms for n in nodes]
        for node in sorted(nodes, key=lambda n: LEVELS.index(n.level)):
            if node.parent >= 0:
                costs[node.parent] = max(costs[node.parent], costs[node.index])
        return [replace(n, cost_ms=costs[n.index]) for n in nodes]
