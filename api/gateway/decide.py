"""The gateway's decision: which engines run a request, and whether KV moves at all.

The router (:class:`~scheduler.router.router.Router`, with the app's prefix index and
fabric cost model) picks the (prefill, decode) pair over a snapshot of the instances
serving the model, with their reserved load. Then, as llm-d's prefix-based decider
does, the request runs **decode-only** when the decode engine already holds all but
fewer than ``min_uncached_tokens`` of the prompt (moving KV would cost more than
computing the rest), when the router itself chose a local prefill, or when the pair
cannot hand KV over (different engine kinds, models, dtypes or version classes; then
the runners-up are tried first). An instance of role ``both`` is a prefill and a
decode candidate at once; chosen for both sides it runs the request **aggregated**.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from api.routing import Fabric, kv_bytes_for
from engines.instance import EngineInstance
from engines.pd import protocol_for
from engines.registry import EngineRegistry
from policies.snapshot import Role, Snapshot, Worker
from scheduler.router.router import Decision, RouteRequest, Unschedulable
from scheduler.router.snapshot import domain_arrays
from scheduler.state.reservations import WorkerLoad

Mode = Literal["disaggregated", "decode-only", "aggregated"]
#: Tokens per KV block when no instance of the model says (vLLM's default).
DEFAULT_BLOCK_TOKENS = 16
#: KV blocks an instance is assumed to have free until its metrics say otherwise.
ASSUMED_FREE_BLOCKS = 1 << 20
#: Concurrent requests an instance takes unless it declares ``max_requests``.
DEFAULT_MAX_REQUESTS = 256
LOCAL = "local"


@dataclass(frozen=True)
class Route:
    """Where one request runs, and why (the ``x-toposched-*`` headers say the same)."""

    mode: Mode
    decode: EngineInstance
    prefill: EngineInstance | None
    tier: str
    reason: str
    prompt_tokens: int
    decode_cached_tokens: int
    decision: Decision

    block_tokens: int

    @property
    def uncached_tokens(self) -> int:
        """Prompt tokens the engine that computes the prompt does not hold."""
        side = self.decision.prefill if self.prefill is not None else self.decision.decode
        return max(self.prompt_tokens - side.cached_blocks * self.block_tokens, 0)


class PairChooser:
    """Builds instance snapshots (kept while the instance set holds) and decides."""

    def __init__(self, min_uncached_tokens: int) -> None:
        """``min_uncached_tokens``: the conditional-disaggregation threshold."""
        self.min_uncached_tokens = min_uncached_tokens
        self._base: tuple[object, Snapshot] | None = None

    def choose(self, fabric: Fabric, instances: Sequence[EngineInstance],
               loads: Mapping[str, WorkerLoad], request: RouteRequest,
               prompt_tokens: int, engines: EngineRegistry | None = None
               ) -> Route | Unschedulable:
        """The route of ``request`` over ``instances`` (all serving its model);
        ``engines``: the service's engine registry (engine load, block size)."""
        snapshot = self.snapshot(fabric, instances, loads, request.model, engines)
        if not snapshot.workers:
            return Unschedulable(request_id=request.request_id, policy="gateway", reasons=(
                f"no instance of {request.model} sits on GPUs of the fabric",))
        result = fabric.router.route(request, snapshot)
        if isinstance(result, Unschedulable):
            return result
        named = {i.name: i for i in instances}
        route = self._route(result, named, prompt_tokens, snapshot.block_tokens)
        if isinstance(route, Route) and route.prefill is None and \
                not protocol_for(route.decode.engine).can_serve_alone(route.decode):
            return self._pair_anyway(fabric, route, named)
        return route

    @staticmethod
    def _pair_anyway(fabric: Fabric, route: Route, named: Mapping[str, EngineInstance]
                     ) -> Route | Unschedulable:
        """A decode engine that cannot run alone (an SGLang decode server) gets the
        nearest compatible prefill even when the router preferred no transfer."""
        decode = route.decode
        options = [i for i in named.values() if i.can_prefill and i.name != decode.name
                   and pair_problem(i, decode) is None]
        if not options:
            return Unschedulable(request_id=route.decision.request_id, policy="gateway",
                                 reasons=(f"{decode.name} needs a prefill engine and no "
                                          "compatible one is in routing",))
        costs = [fabric.distance.pair(i.gpu_names[0], decode.gpu_names[0]) for i in options]
        best = min(range(len(options)), key=lambda k: (costs[k].tier, costs[k].latency_us))
        tier = costs[best].tier.label
        return replace(route, mode="disaggregated", prefill=options[best], tier=tier,
                       reason=f"{decode.name} cannot run alone: nearest prefill "
                              f"{options[best].name} ({tier})")

    def snapshot(self, fabric: Fabric, instances: Sequence[EngineInstance],
                 loads: Mapping[str, WorkerLoad], model: str | None,
                 engines: EngineRegistry | None = None) -> Snapshot:
        """The instances as workers with their reserved load; with the engine registry,
        with the engines' own load figures merged in (:mod:`engines.live`) and prompts
        hashed with the engines' block size (what their KV events are indexed under)."""
        blocks = engines.block_size(model) if engines is not None else None
        key = (id(fabric), tuple(map(id, instances)), blocks)
        if self._base is None or self._base[0] != key:
            self._base = (key, _base_snapshot(fabric, instances, model, blocks))
        base = self._base[1]
        measured = {w.id: w for w in engines.workers(model, loads)} if engines else {}
        changed = {}
        for pos, worker in enumerate(base.workers):
            load = loads.get(worker.id)
            if worker.id in measured:
                changed[pos] = measured[worker.id]
            elif load is not None and (load.tokens or load.requests):
                changed[pos] = replace(worker, queued_tokens=load.tokens,
                                       running_requests=load.requests)
        return base.updated(changed) if changed else base

    def _route(self, decision: Decision, named: Mapping[str, EngineInstance],
               prompt_tokens: int, block_tokens: int) -> Route | Unschedulable:
        decode = named[decision.decode.worker]
        prefill = named[decision.prefill.worker]
        d_cached = min(decision.decode.cached_blocks * block_tokens, prompt_tokens)
        alone = protocol_for(decode.engine).can_serve_alone(decode)
        if prefill.name == decode.name:
            mode: Mode = "aggregated" if decode.role == "both" else "decode-only"
            return Route(mode, decode, None, LOCAL, "the router chose a local prefill "
                         f"(decode holds {d_cached} of {prompt_tokens} prompt tokens)",
                         prompt_tokens, d_cached, decision, block_tokens)
        if alone and prompt_tokens - d_cached < self.min_uncached_tokens:
            return Route("decode-only", decode, None, LOCAL,
                         f"decode holds {d_cached} of {prompt_tokens} prompt tokens "
                         f"(threshold {self.min_uncached_tokens} uncached)",
                         prompt_tokens, d_cached, decision, block_tokens)
        problem = pair_problem(prefill, decode)
        if problem is None:
            return Route("disaggregated", decode, prefill, decision.transfer.tier,
                         f"prefill on {prefill.name} ({decision.transfer.tier})",
                         prompt_tokens, d_cached, decision, block_tokens)
        partner = _compatible_runner_up(decision, named, decode)
        if partner is not None:
            return Route("disaggregated", decode, partner, decision.transfer.tier,
                         f"runner-up prefill {partner.name}: {problem}", prompt_tokens,
                         d_cached, decision, block_tokens)
        if alone:
            return Route("decode-only", decode, None, LOCAL, f"no compatible prefill: {problem}",
                         prompt_tokens, d_cached, decision, block_tokens)
        return Unschedulable(request_id=decision.request_id, policy=decision.policy,
                             reasons=(f"no compatible prefill for {decode.name}: {problem}",))


def pair_problem(prefill: EngineInstance, decode: EngineInstance) -> str | None:
    """Why ``prefill`` cannot hand KV to ``decode`` (None: it can)."""
    if prefill.engine != decode.engine:
        return f"engine kinds differ ({prefill.engine}, {decode.engine})"
    return protocol_for(decode.engine).incompatibility(prefill, decode)


def _compatible_runner_up(decision: Decision, named: Mapping[str, EngineInstance],
                          decode: EngineInstance) -> EngineInstance | None:
    for option in decision.runners_up:
        candidate = named.get(option.prefill)
        if option.decode == decode.name and not option.local_prefill \
                and candidate is not None and pair_problem(candidate, decode) is None:
            return candidate
    return None


def _base_snapshot(fabric: Fabric, instances: Sequence[EngineInstance],
                   model: str | None, engine_blocks: int | None = None) -> Snapshot:
    workers = [_worker(i) for i in instances if all(g in fabric.known for g in i.gpu_names)]
    blocks = engine_blocks or next((i.block_size for i in instances if i.block_size),
                                   DEFAULT_BLOCK_TOKENS)
    domains = domain_arrays(fabric.distance, workers) if workers else {}
    return Snapshot(tuple(workers), domains, {}, {}, blocks, kv_bytes_for(model))


def _worker(instance: EngineInstance) -> Worker:
    return Worker(instance.name, Role(instance.role), instance.gpu_names,
                  max_running_requests=instance.max_requests or DEFAULT_MAX_REQUESTS,
                  free_kv_blocks=ASSUMED_FREE_BLOCKS, capacity_kv_blocks=ASSUMED_FREE_BLOCKS)
