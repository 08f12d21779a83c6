"""The seam between the simulator and the real scheduler: placement in, decisions out.

Everything the simulator takes from :mod:`scheduler` and :mod:`policies` goes
through this module, so an API change there changes only this file:

* :func:`make_placement` runs the real placement code (the solver, the greedy
  heuristic or the topology-unaware baseline) and returns plain instance records;
* :class:`RouterAdapter` turns engine state into the router's immutable
  :class:`~policies.snapshot.Snapshot`, calls :meth:`scheduler.router.router.Router.route`
  with the packaged policy, and turns its :class:`Decision` into a :class:`Choice`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from policies.profile import Policy, resolve_policy
from policies.registry import installed_registry, plugin_allowlist
from policies.snapshot import Role, Snapshot, Worker
from scheduler.capacity import Workload
from scheduler.models_config import ModelShape
from scheduler.placement import Placement, PlacementRequest, SolverOptions, place, prepare
from scheduler.placement.assemble import assemble
from scheduler.placement.greedy import greedy
from scheduler.placement.unaware import unaware
from scheduler.prefix import PrefixIndex
from scheduler.router.cost import CostParams, FabricCostModel
from scheduler.router.router import Decision, Router, RouteRequest
from scheduler.router.snapshot import domain_arrays
from sim.engines import Instance
from sim.workloads import SimRequest
from topology.distance import DistanceModel
from topology.errors import UnschedulableError
from topology.spec import FabricSpec
from topology.tiers import Tier

PlacementMethod = Literal["solver", "greedy", "unaware"]


@dataclass(frozen=True)
class PlacedInstance:
    """An instance to simulate: id, role and GPUs."""

    id: str
    role: Role
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class PlacementOutcome:
    """What the simulator needs from a placement: instances, pairings and how it was made."""

    instances: tuple[PlacedInstance, ...]
    pairings: Mapping[tuple[str, str], float]
    method: str
    transfer_cost_ms: float | None = None
    notes: tuple[str, ...] = ()


def make_placement(fabric: FabricSpec, distance: DistanceModel, *, method: PlacementMethod,
                   model: ModelShape, workload: Workload, prefill: int, decode: int, tp: int,
                   seed: int = 0, time_limit_s: float = 10.0) -> PlacementOutcome:
    """Place ``prefill`` + ``decode`` instances of ``tp`` GPUs with the real placement code."""
    request = PlacementRequest(fabric=fabric, workload=workload, tp_prefill=tp, tp_decode=tp,
                               model=model, prefill=prefill, decode=decode,
                               options=SolverOptions(time_limit_s=time_limit_s, seed=seed))
    if method == "solver":
        try:
            return _outcome(place(request, dm=distance))
        except UnschedulableError as exc:
            # The solver refuses when the expected KV traffic overloads an uplink; the
            # simulator still runs (and shows the congestion) on the greedy placement.
            found = make_placement(fabric, distance, method="greedy", model=model,
                                   workload=workload, prefill=prefill, decode=decode, tp=tp,
                                   seed=seed)
            return replace(found, notes=(f"solver refused ({exc}); greedy placement used",))
    problem = prepare(request, distance)
    roles = greedy(problem) if method == "greedy" else unaware(problem, seed)
    if roles is None:
        raise UnschedulableError((f"the {method} placement found no room for {prefill} "
                                  f"prefill and {decode} decode instances",))
    placement, _ = assemble(problem, roles, method=method, status="heuristic",
                            solve_time_s=0.0, lower_bound_ms=0.0, lower_bound_source="",
                            topology_aware=method != "unaware")
    return _outcome(placement)


def _outcome(placement: Placement) -> PlacementOutcome:
    roles = {"prefill": Role.PREFILL, "decode": Role.DECODE}
    instances = tuple(PlacedInstance(i.id, roles[i.role], i.gpus) for i in placement.instances)
    pairs = {(p.prefill, p.decode): p.weight for p in placement.pairings}
    return PlacementOutcome(instances, pairs, placement.method,
                            placement.objective.transfer_cost_ms)


def aggregated(outcome: PlacementOutcome) -> PlacementOutcome:
    """The same GPUs as aggregated instances (each serves prefill and decode)."""
    return PlacementOutcome(tuple(PlacedInstance(i.id, Role.BOTH, i.gpus)
                                  for i in outcome.instances), {}, f"{outcome.method}+aggregated",
                            None)


def load_policy(name: str) -> Policy:
    """A packaged policy by name (or a policy document by path), plugin packages loaded
    (those ``TOPOSCHED_PLUGINS`` lists, when set)."""
    return resolve_policy(name, installed_registry(plugin_allowlist()))


@dataclass(frozen=True, slots=True)
class Choice:
    """What the simulator does with a request: prefill where, decode where."""

    prefill: str
    decode: str
    local: bool
    #: Prompt blocks the decode worker lacks (what moves to it).
    lacks: int = 0
    #: Prefix pull: the worker the prefill worker copies its prefix from, and the
    #: leading blocks it holds once the copy has landed (``None``, 0: no pull).
    pull_from: str | None = None
    pull_blocks: int = 0


#: Per-tier (latency, bandwidth) factors that make every transfer free.
_FREE = np.tile((0.0, np.inf), (len(Tier), 1))


class _FabricBlindRouter(Router):
    """The real router pricing every transfer as free: a topology-unaware router, and the
    right one for an infinitely fast fabric."""

    def cost_model(self, snapshot: Snapshot) -> FabricCostModel:
        model = super().cost_model(snapshot)
        model.table.scale(_FREE)  # every tier: no latency, infinite bandwidth
        return model


class RouterAdapter:
    """Builds snapshots from engines and routes each request with the real router."""

    def __init__(self, distance: DistanceModel, policy: Policy, instances: Sequence[Instance],
                 index: PrefixIndex, *, pairings: Mapping[tuple[str, str], float],
                 block_tokens: int, kv_bytes_per_token: int, prefill_tokens_per_s: float,
                 seed: int = 0, blind_fabric: bool = False,
                 cost: CostParams | None = None, prefill_ttl_s: float | None = None) -> None:
        """Route over ``instances`` (fixed for the run) with ``policy``; ``blind_fabric``:
        transfers are priced as free; ``cost``: the router's cost-model constants;
        ``prefill_ttl_s``: the router's routing-time prefix prediction
        (:class:`~scheduler.router.router.Router`)."""
        kind = _FabricBlindRouter if blind_fabric else Router
        self.blind_fabric = blind_fabric
        self.router = kind(distance, policy, index=index, seed=seed, cost=cost,
                           prefill_ttl_s=prefill_ttl_s)
        self.instances = tuple(instances)
        self.pairings = dict(pairings)
        self.block_tokens, self.kv_bytes_per_token = block_tokens, kv_bytes_per_token
        self.prefill_rate = prefill_tokens_per_s
        static = [self._worker(i) for i in self.instances]
        self._domains: dict[str, Any] = domain_arrays(distance, static)
        self.refusals = 0
        #: Decisions that split a request over two aggregated workers (executed as made).
        self.split_in_aggregated = 0

    def _worker(self, inst: Instance) -> Worker:
        cache = inst.cache
        return Worker(inst.id, inst.role, inst.gpus, queued_tokens=inst.queued_tokens,
                      running_requests=inst.load_requests,
                      max_running_requests=inst.timing.max_num_seqs, free_kv_blocks=cache.free,
                      capacity_kv_blocks=cache.capacity, prefill_tokens_per_s=self.prefill_rate,
                      promised_kv_blocks=inst.promised_blocks,
                      context_tokens=inst.ctx_sum if inst.role is not Role.PREFILL else 0)

    def snapshot(self, link_load: Mapping[str, int]) -> Snapshot:
        """The router's view of the engines now."""
        return Snapshot(tuple(self._worker(i) for i in self.instances), self._domains,
                        self.pairings, link_load, self.block_tokens, self.kv_bytes_per_token)

    def decide(self, request: SimRequest, link_load: Mapping[str, int]) -> Choice | None:
        """Route ``request``; ``None`` when the router finds no pair now (retry later)."""
        route = RouteRequest.model_construct(
            request_id=request.id, model=None, block_hashes=list(request.block_hashes),
            token_ids=None, prompt_tokens=request.prompt_tokens, session=request.session,
            prefill_worker=None, decode_worker=None)
        result = self.router.route(route, self.snapshot({} if self.blind_fabric else link_load))
        if not isinstance(result, Decision):
            self.refusals += 1
            return None
        local = result.mode == "local-prefill" or result.prefill.worker == result.decode.worker
        if not local and self.instances[0].role is Role.BOTH:
            self.split_in_aggregated += 1
        prefill = result.decode.worker if local else result.prefill.worker
        pull = result.pull
        if pull is None:
            return Choice(prefill, result.decode.worker, local, result.transfer.blocks)
        return Choice(prefill, result.decode.worker, local, result.transfer.blocks,
                      pull.source, result.prefill.cached_blocks + pull.blocks)
