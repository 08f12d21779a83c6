"""The run loop: arrivals → real router → prefill → KV transfer over the fabric → decode.

One :class:`Simulation` replays one trace on one cluster with one policy and one
placement. It is deterministic under ``SimConfig.seed``: the event queue breaks ties
by scheduling order, the policies draw from the router's seeded generator, and
nothing reads the wall clock except the ``wall_s`` figure of the summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policies.snapshot import Role
from scheduler.capacity import Workload, build_profile
from scheduler.kv import kv_bytes_per_token
from scheduler.models_config import ModelShape, load_models
from scheduler.prefix import PrefixIndex
from scheduler.router.cost import CostParams
from sim.adapters import (
    Choice,
    PlacementMethod,
    PlacementOutcome,
    RouterAdapter,
    aggregated,
    load_policy,
    make_placement,
)
from sim.clock import EventKind, EventQueue
from sim.engines import Instance, Job, KvCache, StepResult
from sim.metrics import Drops, Slo, Summary, summarise
from sim.network import Flow, Network
from sim.timing import EngineSpec, EngineTiming
from sim.workloads import SimRequest, Trace, ideal_hit_ratio
from topology.distance import DistanceModel
from topology.spec import FabricSpec

#: A request refused this many times in a row is dropped (the cluster cannot hold it).
MAX_ATTEMPTS = 2000

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SimConfig:
    """One run's knobs: model and instance shape, counts, placement, policy, seed."""

    policy: str = "fabric-cost"
    placement: PlacementMethod = "solver"
    model: str = "llama-3-70b"
    tp: int = 4
    prefill: int = 4
    decode: int = 4
    aggregated: bool = False
    infinite_fabric: bool = False
    blind_fabric: bool = False
    blind_prefix: bool = False
    seed: int = 0
    slo: Slo = field(default_factory=Slo)
    engine: EngineSpec = field(default_factory=EngineSpec)
    #: Constants of the router's cost model; ``None``: derived from the engine and trace.
    cost: CostParams | None = None
    #: Seconds the router counts a routed prompt's blocks as held by the worker that
    #: will compute them (until its engine reports them); ``None``: from KV events only.
    prefill_ttl_s: float | None = None
    #: Prefix pull (``CostParams.prefix_pull``): the router may have a prefill worker
    #: copy a cached prefix from the worker holding it instead of recomputing it, where
    #: it prices that cheaper. On by default (only ``fabric-cost`` prices pulls).
    prefix_pull: bool = True
    retry_s: float = 0.05
    solver_time_limit_s: float = 10.0

    @property
    def label(self) -> str:
        """A short name for tables: policy, placement and mode."""
        flags = [name for name, on in (("aggregated", self.aggregated),
                                       ("infinite-fabric", self.infinite_fabric),
                                       ("fabric-blind", self.blind_fabric),
                                       ("prefix-blind", self.blind_prefix),
                                       ("no-prefix-pull", not self.prefix_pull)) if on]
        return "+".join([f"{self.policy}/{self.placement}", *flags])


def trace_workload(trace: Trace, model: str) -> Workload:
    """The placement's workload summary of a trace (rates, mean lengths, ideal reuse)."""
    reqs = trace.requests
    count = max(len(reqs), 1)
    return Workload(model=model, rate_rps=max(len(reqs) / max(trace.duration_s, 1.0), 1e-3),
                    input_tokens_mean=max(sum(r.prompt_tokens for r in reqs) / count, 1.0),
                    output_tokens_mean=max(sum(r.output_tokens for r in reqs) / count, 1.0),
                    cached_fraction=min(ideal_hit_ratio(trace), 0.99), ttft_slo_ms=2000.0,
                    tpot_slo_ms=100.0)


class Simulation:
    """A cluster, a trace and a policy, ready to :meth:`run`."""

    def __init__(self, fabric: FabricSpec, trace: Trace, config: SimConfig, *,
                 distance: DistanceModel | None = None,
                 placement: PlacementOutcome | None = None) -> None:
        """Place the instances (unless ``placement`` is given) and build the engines."""
        self.trace, self.config = trace, config
        self.distance = distance or DistanceModel(fabric)
        shape = load_models().get(config.model)
        self.profile = build_profile(shape, fabric.hosts[0].gpu_type, config.tp)
        self.timing = config.engine.timing(self.profile)
        self.kv_bytes_per_token = kv_bytes_per_token(shape)
        self.placement = placement or self._place(fabric, shape)
        if config.aggregated:
            self.placement = aggregated(self.placement)
        self.queue = EventQueue()
        self.index = PrefixIndex(max_entries=None, clock=self.queue.now)
        self.instances = self._engines(self.timing)
        self.network = Network(self.distance, self.queue, infinite=config.infinite_fabric)
        # A prefix-blind router reads an index no engine reports to: it never sees a hit.
        routed_index = PrefixIndex(max_entries=None) if config.blind_prefix else self.index
        self.cost = config.cost or self._cost_params()
        if config.prefix_pull:
            self.cost = self.cost.model_copy(update={"prefix_pull": True})
            for inst in self.instances.values():
                inst.track_pending = True
        self.router = RouterAdapter(
            self.distance, load_policy(config.policy), list(self.instances.values()),
            routed_index, pairings=self.placement.pairings, block_tokens=trace.block_tokens,
            kv_bytes_per_token=self.kv_bytes_per_token,
            prefill_tokens_per_s=self._typical_rate(), seed=config.seed,
            blind_fabric=config.infinite_fabric or config.blind_fabric,
            cost=self.cost, prefill_ttl_s=config.prefill_ttl_s)
        self.finished: list[Job] = []
        #: Prefix pulls: blocks the router planned to copy, and those valid to copy.
        self.pull_stats = [0, 0]
        #: Whether a pull waits for blocks its holder is still computing or receiving
        #: (else it copies the valid ones and the prefill computes the rest).
        self.pull_waits = True
        self.too_big = self.gave_up = 0
        self._largest_cache = max((i.cache.capacity for i in self.instances.values()), default=0)

    def _place(self, fabric: FabricSpec, shape: ModelShape) -> PlacementOutcome:
        c = self.config
        return make_placement(fabric, self.distance, method=c.placement, model=shape,
                              workload=trace_workload(self.trace, shape.name),
                              prefill=c.prefill, decode=c.decode, tp=c.tp, seed=c.seed,
                              time_limit_s=c.solver_time_limit_s)

    def _engines(self, timing: EngineTiming) -> dict[str, Instance]:
        engine, block = self.config.engine, self.trace.block_tokens
        blocks = engine.kv_capacity_blocks(self.profile, block)
        return {p.id: Instance(p.id, p.role, p.gpus, timing,
                               KvCache(p.id, blocks, self.index, engine.eviction), block,
                               self.queue)
                for p in self.placement.instances}

    def _typical_rate(self) -> float:
        """Prefill tokens per second of the engine on the trace's mean prompt."""
        reqs = self.trace.requests
        mean = max(sum(r.prompt_tokens for r in reqs) / max(len(reqs), 1), 1.0)
        chunk = self.timing.max_num_batched_tokens or int(mean)
        pieces = [(min(chunk, int(mean) - done), done) for done in range(0, int(mean), chunk)]
        seconds = sum(self.timing.prefill.ms([piece]) for piece in pieces) / 1e3
        return mean / max(seconds, 1e-9)

    def _cost_params(self) -> CostParams:
        """The router's decode-side constants for this engine and trace, as an operator
        would set them from the engine's profile and the observed output lengths (the
        step curve linearised at a third of the KV capacity)."""
        reqs = self.trace.requests
        output = sum(r.output_tokens for r in reqs) / max(len(reqs), 1)
        instance = next(iter(self.instances.values()), None)
        capacity = instance.capacity_tokens if instance else 1
        per_running, per_token = self.timing.decode_slopes_s(capacity / 3, capacity)
        return CostParams(decode_s_per_running=per_running, decode_s_per_kv_token=per_token,
                          expected_output_tokens=output)

    # -- the loop ---------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> Summary:
        """Replay the whole trace and summarise it."""
        started = time.perf_counter()
        first = self.trace.requests[0].arrival_s if self.trace.requests else 0.0
        for request in self.trace.requests:
            self.queue.schedule(request.arrival_s, EventKind.ARRIVAL, request)
        total, handlers = len(self.trace.requests), self._handlers()
        while (event := self.queue.pop()) is not None:
            kind, payload = event
            handlers[kind](payload)
            if progress is not None and self.queue.processed % 5000 == 0:
                progress(len(self.finished) + self.too_big + self.gave_up, total)
        if progress is not None:
            progress(total, total)
        return self._summary(time.perf_counter() - started, first)

    def _handlers(self) -> dict[EventKind, Callable[[Any], None]]:
        return {EventKind.ARRIVAL: self._arrival, EventKind.RETRY: self._route,
                EventKind.STEP_END: self._step_end, EventKind.EPOCH_END: self._epoch_end,
                EventKind.FLOW_DONE: self._flow_done, EventKind.KV_ARRIVED: self._kv_arrived,
                EventKind.PULL_ARRIVED: self._pull_arrived}

    def _arrival(self, request: SimRequest) -> None:
        job = Job(request)
        need = math.ceil((request.prompt_tokens + request.output_tokens) / self.trace.block_tokens)
        if need > self._largest_cache:
            self.too_big += 1
            return
        self._route(job)

    def _route(self, job: Job) -> None:
        choice = self.router.decide(job.request, self.network.link_load)
        if choice is None:
            job.attempts += 1
            if job.attempts >= MAX_ATTEMPTS:
                self.gave_up += 1
            else:
                self.queue.schedule(self.queue.now() + self.config.retry_s, EventKind.RETRY, job)
            return
        job.prefill, job.decode, job.local = choice.prefill, choice.decode, choice.local
        job.routed_s = self.queue.now()
        if job.local:
            self.instances[job.decode].enqueue_prefill(job)
        else:
            decode = self.instances[job.decode]
            decode.incoming += 1
            job.promised_blocks = self.cost.promised_blocks(choice.lacks,
                                                            self.trace.block_tokens)
            decode.promised_blocks += job.promised_blocks
            if choice.pull_from is None or not self._start_pull(job, choice):
                self.instances[job.prefill].enqueue_prefill(job)

    # -- prefix pull --------------------------------------------------------------------
    def _start_pull(self, job: Job, choice: Choice) -> bool:
        """Copy the prefix ``choice`` names from its holder to the prefill worker over the
        fabric (the holder keeps its blocks, pinned while they are read); the prefill is
        queued once the copy lands. Blocks the holder is still computing (or receiving)
        are waited for (``pull_waits``; else only the valid ones are copied). False when
        nothing is left to copy (the prefill is queued now)."""
        assert choice.pull_from is not None
        holder, target = self.instances[choice.pull_from], self.instances[job.prefill]
        hashes = job.request.block_hashes[:choice.pull_blocks]
        start = target.cache.match(hashes)
        end = holder.cache.match(hashes) if self.pull_waits else holder.valid_prefix(hashes)
        self.pull_stats[0] += len(hashes) - start
        self.pull_stats[1] += max(holder.valid_prefix(hashes) - start, 0)
        if end <= start:
            return False
        holder.cache.acquire(hashes[:end])
        job.pull_s, job.pull_pinned, job.pull_source = self.queue.now(), end, holder.id
        # the prefill's work counts in the target's queue from now, as the live router's
        # load reservation counts it from routing: else more requests pile on meanwhile
        job.queued_tokens = max(job.request.prompt_tokens - end * self.trace.block_tokens, 1)
        target.queued_tokens += job.queued_tokens
        pull = _Pull(job, holder)
        if holder.valid_prefix(hashes[:end]) < end:
            holder.pull_waiting.append(pull)
        else:
            self._send_pull(pull)
        return True

    def _send_pull(self, pull: _Pull) -> None:
        job, holder = pull.job, pull.holder
        target = self.instances[job.prefill]
        hashes = job.request.block_hashes[:job.pull_pinned]
        route = self.network.routes.route(holder.gpus, target.gpus)
        blocks = len(hashes) - target.cache.match(hashes)
        job.pull_bytes = blocks * self.trace.block_tokens * self.kv_bytes_per_token
        job.pull_tier = route.tier
        self.network.start(route, job.pull_bytes, pull)

    def _pulls_ready(self, inst: Instance) -> None:
        """Send the pulls waiting on ``inst`` whose blocks are all valid now."""
        waiting, inst.pull_waiting = inst.pull_waiting, []
        for pull in waiting:
            hashes = pull.job.request.block_hashes[:pull.job.pull_pinned]
            if inst.valid_prefix(hashes) < len(hashes):
                inst.pull_waiting.append(pull)
            else:
                self._send_pull(pull)

    def _pull_arrived(self, pull: _Pull) -> None:
        """The copy landed: the prefill worker holds the prefix (pinned until the prefill
        starts, if it fits) and the request joins its prefill queue."""
        job = pull.job
        target = self.instances[job.prefill]
        hashes = job.request.block_hashes[:job.pull_pinned]
        job.pull_s = self.queue.now() - job.pull_s
        target.queued_tokens -= job.queued_tokens  # enqueue_prefill counts it anew
        if target.cache.fits(hashes):
            job.pulled_blocks = len(hashes) - target.cache.match(hashes)
            target.cache.acquire(hashes)
        else:
            job.pull_pinned = 0
        target.enqueue_prefill(job)

    def _step_end(self, payload: tuple[Instance, int]) -> None:
        inst, token = payload
        self._settle(inst, inst.end_step(token))

    def _epoch_end(self, payload: tuple[Instance, int]) -> None:
        inst, token = payload
        self._settle(inst, inst.end_epoch(token))

    def _settle(self, inst: Instance, result: StepResult) -> None:
        """Record finished requests, free room for transfers waiting on ``inst``, and
        send the KV of prefills finished on ``inst`` to their decode workers."""
        if inst.pull_waiting:
            self._pulls_ready(inst)
        if result.done:
            self.finished.extend(result.done)
            while inst.alloc_wait and inst.try_reserve(inst.alloc_wait[0]):
                self._transfer(inst.alloc_wait.popleft())
        for job in result.prefilled:
            decode = self.instances[job.decode]
            if decode.try_reserve(job):
                self._transfer(job)
            else:
                decode.alloc_wait.append(job)

    def _transfer(self, job: Job) -> None:
        prefill, decode = self.instances[job.prefill], self.instances[job.decode]
        route = self.network.routes.route(prefill.gpus, decode.gpus)
        tokens = max(job.request.prompt_tokens - job.decode_cached * self.trace.block_tokens, 0)
        job.transfer_bytes = tokens * self.kv_bytes_per_token
        job.transfer_tier = route.tier
        job.transfer_s = self.queue.now()
        self.network.start(route, job.transfer_bytes, job)

    def _flow_done(self, payload: tuple[Flow, int]) -> None:
        flow, version = payload
        if not self.network.finish(flow, version):
            return
        if isinstance(flow.payload, _Pull):
            pull: _Pull = flow.payload
            pull.holder.cache.release(pull.job.request.block_hashes[:pull.job.pull_pinned])
            pull.holder.kick()
            self.queue.schedule(self.queue.now() + self.network.arrival_delay(flow),
                                EventKind.PULL_ARRIVED, pull)
            return
        job: Job = flow.payload
        self.instances[job.prefill].release_prefill_side(job)
        self.queue.schedule(self.queue.now() + self.network.arrival_delay(flow),
                            EventKind.KV_ARRIVED, job)

    def _kv_arrived(self, job: Job) -> None:
        now = self.queue.now()
        job.kv_ready_s, job.transfer_s = now, now - job.transfer_s
        decode = self.instances[job.decode]
        decode.add_decode(job)
        if decode.pull_waiting:
            self._pulls_ready(decode)

    # -- results ----------------------------------------------------------------------
    def _summary(self, wall_s: float, first_s: float) -> Summary:
        horizon = self.queue.now() - first_s
        by_role: dict[str, list[float]] = {"all": [], "prefill": [], "decode": []}
        for inst in self.instances.values():
            share = inst.utilisation(horizon)
            by_role["all"].append(share)
            if inst.role is not Role.DECODE:
                by_role["prefill"].append(share)
            if inst.role is not Role.PREFILL:
                by_role["decode"].append(share)
        mean = {k: sum(v) / len(v) if v else 0.0 for k, v in by_role.items()}
        drops = Drops(too_big=self.too_big, gave_up=self.gave_up)
        return summarise(self.finished, requests=len(self.trace.requests), drops=drops,
                         duration_s=horizon, arrival_span_s=self.trace.duration_s,
                         slo=self.config.slo,
                         ideal_hit_ratio=ideal_hit_ratio(self.trace),
                         utilisation=(mean["all"], mean["prefill"], mean["decode"]),
                         refusals=self.router.refusals, events=self.queue.processed,
                         split_in_aggregated=self.router.split_in_aggregated,
                         predicted_blocks=self.router.router.index.stats().predictions_made,
                         wall_s=wall_s)


@dataclass(frozen=True, slots=True)
class _Pull:
    """A prefix copy in flight: the request it is for and the instance it reads."""

    job: Job
    holder: Instance


def simulate(fabric: FabricSpec, trace: Trace, config: SimConfig, *,
             distance: DistanceModel | None = None, placement: PlacementOutcome | None = None,
             progress: Progress | None = None) -> Summary:
    """Build a :class:`Simulation` and run it."""
    return Simulation(fabric, trace, config, distance=distance, placement=placement).run(progress)
