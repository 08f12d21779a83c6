"""The routing decision: a request and a snapshot in, a :class:`Decision` out.

``Router.route`` reads the prefix index for the request's block chain, builds the
cycle context (snapshot, cached blocks per worker, the fabric cost model, session),
runs the policy and explains the result: the chosen pair, the runners-up, the
cached blocks on each side, the block hashes the decode worker lacks (the delta to
transfer), the bytes, the tier and the TTFT estimate term by term.

Requests that cannot be placed (no decode worker with free KV blocks, an unknown
pinned worker, no candidates) come back as :class:`Unschedulable` with reasons;
malformed requests raise :class:`~topology.errors.ValidationError` (an
``InputError``, 422 at the API). Nothing else escapes for bad input.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from operator import itemgetter
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.contracts import PairChoice, Refusal
from policies.profile import Policy
from policies.snapshot import CycleContext, IntArray, RequestView, Snapshot, Worker
from scheduler.prefix import MatchInfo, PrefixIndex, block_hashes
from scheduler.router.cost import CostParams, FabricCostModel, FabricRows, PairTable, TtftTerms
from scheduler.router.pull import pull_bytes, pull_seconds
from scheduler.router.underway import PrefixesUnderWay
from topology.distance import DistanceModel
from topology.documents import validate
from topology.errors import Issue, ValidationError
from topology.tiers import Tier

log = logging.getLogger(__name__)

#: Workers (in the snapshot and in the index's answer) up to which a request's cached
#: blocks per position are gathered in Python: on a few, numpy's per-call cost dominates.
FEW_WORKERS = 16

BlockHash = Annotated[int, Field(ge=0, le=(1 << 64) - 1, strict=True)]


class RouteRequest(BaseModel):
    """A request to place: its block chain (or token ids to hash) and routing hints.

    ``prompt_tokens`` defaults to the token count, or to blocks × block size.
    ``prefill_worker`` / ``decode_worker`` pin a side to one worker.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    request_id: str = Field(default="request", min_length=1, max_length=256)
    model: str | None = None
    block_hashes: list[BlockHash] | None = Field(default=None, max_length=1 << 16)
    token_ids: list[Annotated[int, Field(ge=0, strict=True)]] | None = Field(
        default=None, max_length=1 << 22)
    prompt_tokens: int | None = Field(default=None, ge=1)
    session: str | None = Field(default=None, min_length=1, max_length=256)
    prefill_worker: str | None = None
    decode_worker: str | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> RouteRequest:
        if (self.block_hashes is None) == (self.token_ids is None):
            raise ValueError("give exactly one of block_hashes and token_ids")
        return self


class Side(BaseModel):
    """One side of the chosen pair."""

    model_config = ConfigDict(frozen=True)
    worker: str
    gpus: tuple[str, ...]
    cached_blocks: int


class Alternative(BaseModel):
    """A runner-up option and its score relative to the chosen one."""

    model_config = ConfigDict(frozen=True)
    prefill: str
    decode: str
    local_prefill: bool
    score: float
    ttft_s: float | None


class Transfer(BaseModel):
    """What moves from the prefill to the decode worker: only the blocks it lacks."""

    model_config = ConfigDict(frozen=True)
    block_hashes: tuple[int, ...]
    blocks: int
    bytes: int
    tier: str
    links: tuple[str, ...]
    bottleneck_gb_per_s: float | None


class PrefixPull(BaseModel):
    """A cached prefix the prefill worker copies from another worker before its prefill
    (``CostParams.prefix_pull``): the blocks it lacks of the holder's prefix."""

    model_config = ConfigDict(frozen=True)
    source: str
    source_gpus: tuple[str, ...]
    target: str
    block_hashes: tuple[int, ...]
    blocks: int
    bytes: int
    #: The copy's time: over the fabric, links shared, and its fixed overhead
    #: (``CostParams.pull_overhead_s``).
    seconds: float
    compute_saved_s: float
    links: tuple[str, ...]
    bottleneck_gb_per_s: float | None


class Decision(BaseModel):
    """A placed request, explained."""

    model_config = ConfigDict(frozen=True)
    status: Literal["scheduled"] = "scheduled"
    request_id: str
    policy: str
    mode: Literal["disaggregated", "local-prefill"]
    prefill: Side
    decode: Side
    transfer: Transfer
    #: The prefix the prefill worker copies before its prefill (``None``: none).
    pull: PrefixPull | None = None
    estimate: TtftTerms
    score: float
    runners_up: tuple[Alternative, ...]
    considered: int
    notes: tuple[str, ...]
    decision_us: float


class Unschedulable(BaseModel):
    """A valid request that cannot be placed now, with the reasons."""

    model_config = ConfigDict(frozen=True)
    status: Literal["unschedulable"] = "unschedulable"
    request_id: str
    policy: str
    reasons: tuple[str, ...]


RouteResult = Decision | Unschedulable


def parse_route_request(data: Any, source: str = "<request>") -> RouteRequest:
    """Validate a request document; all problems are raised together with paths."""
    return validate(RouteRequest, data, source)


class Router:
    """Routes requests with one policy over snapshots of one fabric.

    Holds what outlives a decision: the prefix index, the pair table (rebuilt when
    the workers' GPUs change), the session → pair memory, the decision count and, with
    prefix pulls, the prefixes it sent to be computed or moved until its estimate has
    them valid (:mod:`scheduler.router.underway`).
    """

    def __init__(self, distance: DistanceModel, policy: Policy, *,
                 index: PrefixIndex | None = None, cost: CostParams | None = None,
                 seed: int = 0, max_sessions: int = 100_000,
                 predict_ttl_s: float | None = None, prefill_ttl_s: float | None = None) -> None:
        """Create a router; ``index`` defaults to an empty prefix index.

        ``predict_ttl_s``: after each decision, count the request's blocks as held by
        the chosen workers for that long (for engines without KV events, and to
        bridge the gap until their first event), as Dynamo's approximate mode does.
        ``prefill_ttl_s``: count the request's blocks as held by the worker that
        prefills it for that long: it computes every block of the prompt, while KV
        events (the sidecar's) announce only the blocks a transfer delivers.
        """
        self.distance = distance
        self.predict_ttl_s = predict_ttl_s
        self.prefill_ttl_s = prefill_ttl_s
        self.policy = policy
        self.index = index if index is not None else PrefixIndex()
        self.cost_params = cost or CostParams()
        self.seed = seed
        self.sequence = 0
        self._sessions: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._max_sessions = max_sessions
        self._match_order: tuple[tuple[str, ...], Mapping[str, int], IntArray] | None = None
        #: The snapshot the cost model was last asked for, its workers' GPUs (None: not
        #: worked out yet) and the model.
        self._model: tuple[Snapshot, tuple[tuple[str, ...], ...] | None,
                           FabricCostModel] | None = None
        #: Calibrated (latency, bandwidth) factors per tier code; None: the fabric's own.
        self._tier_factors: npt.NDArray[np.float64] | None = None
        #: Fabric figures per source GPU, shared by the pair tables of every worker set.
        self._rows: FabricRows | None = None
        #: Prefixes sent to be computed or moved and not valid yet (for prefix pulls).
        self.under_way = (PrefixesUnderWay(self.index.clock) if self.cost_params.prefix_pull
                          else None)

    def cost_model(self, snapshot: Snapshot) -> FabricCostModel:
        """The cost model for ``snapshot`` (kept, with its pair table, while GPUs match)."""
        known = self._model
        if known is not None and _same_workers(known[0], snapshot):
            return known[2]
        spliced = self._spliced(known[0], known[2], snapshot) if known is not None else None
        if spliced is not None:
            self._model = (snapshot, None, spliced)
            return spliced
        key = PairTable.key(snapshot.workers)
        if known is None or (known[1] or PairTable.key(known[0].workers)) != key:
            if self._rows is None:
                self._rows = FabricRows(self.distance)
            table = PairTable(self.distance, snapshot.workers, self._rows)
            table.scale(self._tier_factors)
            model = FabricCostModel(table, self.cost_params, self.under_way)
        else:
            model = known[2]
        self._model = (snapshot, key, model)
        return model

    def _spliced(self, old: Snapshot, model: FabricCostModel, new: Snapshot
                 ) -> FabricCostModel | None:
        """The cost model for ``new`` when it was spliced from ``old``'s worker set (a
        worker joined or left): ``old``'s pair table spliced likewise; else None."""
        origin = new.origin
        if origin is None or origin.parent is not old.position:
            return None
        added = new.workers[origin.at:origin.at + origin.added]
        return FabricCostModel(model.table.spliced(origin.at, origin.removed, added),
                               self.cost_params, self.under_way)

    @property
    def pair_table(self) -> PairTable | None:
        """The pair figures of the last snapshot routed over (None before the first)."""
        return self._model[2].table if self._model is not None else None

    def set_pull_overhead(self, seconds: float) -> None:
        """Price each prefix pull with ``seconds`` of fixed cost from the next decision on
        (``CostParams.pull_overhead_s``; the cost model kept keeps its tables)."""
        self.cost_params = self.cost_params.model_copy(update={"pull_overhead_s": seconds})
        if self._model is not None:
            self._model[2].params = self.cost_params

    def set_tier_scales(self, factors: Mapping[str, tuple[float, float]]) -> bool:
        """Scale each tier's latency and bandwidth by measured ``(latency, bandwidth)``
        factors (tier label → factors; unlisted tiers keep the fabric's figures), as
        calibration learns them. True when the figures changed."""
        table = np.ones((len(Tier), 2))
        for label, pair in factors.items():
            table[Tier.from_label(label)] = pair
        current = self._tier_factors if self._tier_factors is not None else np.ones_like(table)
        if np.array_equal(table, current):
            return False
        # all ones: the fabric's own figures (×1.0 is exact, so skipping it changes nothing)
        self._tier_factors = None if (table == 1.0).all() else table
        if self._model is not None:
            self._model[2].table.scale(self._tier_factors)
        return True

    def session(self, name: str) -> tuple[str, str] | None:
        """The (prefill, decode) pair the session ``name`` was last routed to."""
        return self._sessions.get(name)

    def route(self, request: RouteRequest | Mapping[str, Any], snapshot: Snapshot) -> RouteResult:
        """Place ``request`` on ``snapshot``: a :class:`Decision` or :class:`Unschedulable`."""
        started = time.perf_counter()
        req = request if isinstance(request, RouteRequest) else parse_route_request(request)
        view = self._view(req, snapshot)
        refusal = self._precheck(view, snapshot)
        if refusal:
            return Unschedulable(request_id=req.request_id, policy=self.policy.name,
                                 reasons=refusal)
        ctx = self._context(view, snapshot)
        choice = self.policy.schedule(ctx)
        self.sequence += 1
        if isinstance(choice, Refusal):
            return Unschedulable(request_id=req.request_id, policy=self.policy.name,
                                 reasons=choice.reasons)
        self._remember(view.session, choice)
        self._predict(view, choice)
        decision = self._explain(ctx, choice, started)
        if self.under_way is not None:
            _record_under_way(self.under_way, view.block_hashes, decision)
        if log.isEnabledFor(logging.DEBUG):  # skip building the fields on every decision
            log.debug("routed", extra={"request_id": decision.request_id,
                                       "prefill": decision.prefill.worker,
                                       "decode": decision.decode.worker, "mode": decision.mode,
                                       "tier": decision.transfer.tier,
                                       "ttft_s": decision.estimate.total_s})
        return decision

    # -- request -------------------------------------------------------------------
    def _view(self, req: RouteRequest, snapshot: Snapshot) -> RequestView:
        size = snapshot.block_tokens
        if req.token_ids is not None:
            hashes = tuple(block_hashes(req.token_ids, size))
            tokens = req.prompt_tokens or len(req.token_ids)
        else:
            hashes = tuple(req.block_hashes or ())
            tokens = req.prompt_tokens or len(hashes) * size
        if tokens < 1 or len(hashes) > math.ceil(tokens / size):
            raise ValidationError("<request>", [Issue(
                "prompt_tokens", f"{tokens} tokens cannot span {len(hashes)} blocks of {size}")])
        return RequestView(req.request_id, hashes, tokens, req.model, req.session,
                           req.prefill_worker, req.decode_worker)

    def _precheck(self, view: RequestView, snapshot: Snapshot) -> tuple[str, ...]:
        if not snapshot.workers:
            return ("the snapshot has no workers",)
        return tuple(f"unknown worker {name!r} pinned as {side}"
                     for side, name in (("prefill", view.prefill_worker),
                                        ("decode", view.decode_worker))
                     if name is not None and name not in snapshot.position)

    def _context(self, view: RequestView, snapshot: Snapshot) -> CycleContext:
        if view.block_hashes:
            matches = self.index.match(view.block_hashes, model=view.model)
            cached = self._cached(matches, snapshot)
        else:
            cached = np.zeros(len(snapshot.workers), dtype=np.int64)
        cached.flags.writeable = False
        session = self._sessions.get(view.session) if view.session else None
        return CycleContext(view, snapshot, cached, self.cost_model(snapshot), self.seed,
                            self.sequence, session)

    def _cached(self, matches: Mapping[str, MatchInfo], snapshot: Snapshot) -> IntArray:
        """Leading blocks of the request held at each snapshot position (``matches``:
        the index's answer by worker; workers not in the snapshot are left out)."""
        positions = self._positions(tuple(matches), snapshot)
        if len(matches) <= FEW_WORKERS and len(snapshot.workers) <= FEW_WORKERS:
            # one array from a short Python pass: fewer numpy calls, same values
            held = [0] * len(snapshot.workers)
            for pos, info in zip(positions.tolist(), matches.values(), strict=True):
                if pos >= 0:
                    held[pos] = info[0]
            return np.array(held, dtype=np.int64)
        cached = np.zeros(len(snapshot.workers), dtype=np.int64)
        blocks = np.fromiter(map(itemgetter(0), matches.values()), dtype=np.int64,
                             count=len(matches))
        known = positions >= 0
        cached[positions[known]] = blocks[known]
        return cached

    def _positions(self, names: tuple[str, ...], snapshot: Snapshot) -> IntArray:
        """Snapshot position of each index worker (-1: not in the snapshot), memoised:
        the index lists its workers in the same order until they change."""
        known = self._match_order  # the position map by identity: comparing maps is O(n)
        if known is None or known[1] is not snapshot.position or known[0] != names:
            pos = snapshot.position
            found = np.array([pos.get(name, -1) for name in names], dtype=np.int64)
            known = self._match_order = (names, snapshot.position, found)
        return known[2]

    def _predict(self, view: RequestView, choice: PairChoice) -> None:
        if not view.block_hashes:
            return
        ttl: dict[str, float] = {}
        if self.predict_ttl_s is not None:
            ttl = dict.fromkeys((choice.prefill.id, choice.decode.id), self.predict_ttl_s)
        if self.prefill_ttl_s:
            computes = choice.decode.id if choice.local else choice.prefill.id
            ttl[computes] = max(ttl.get(computes, 0.0), self.prefill_ttl_s)
        for worker, seconds in ttl.items():
            self.index.predict(worker, view.block_hashes, seconds, model=view.model)

    def _remember(self, session: str | None, choice: PairChoice) -> None:
        if session is None:
            return
        self._sessions[session] = (choice.prefill.id, choice.decode.id)
        self._sessions.move_to_end(session)
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)

    # -- explanation -------------------------------------------------------------------
    def _explain(self, ctx: CycleContext, choice: PairChoice, started: float) -> Decision:
        snap = ctx.snapshot
        p, d = snap.position[choice.prefill.id], snap.position[choice.decode.id]
        local = choice.local or p == d
        cost = ctx.cost
        assert isinstance(cost, FabricCostModel)
        terms = cost.terms(ctx, p, d, local=local)
        d_cached = int(ctx.cached[d])
        delta = () if local else ctx.request.block_hashes[d_cached:]
        transfer = Transfer(block_hashes=delta, blocks=len(delta), bytes=terms.transfer_bytes,
                            tier=terms.tier, links=terms.links,
                            bottleneck_gb_per_s=terms.bottleneck_gb_per_s)
        pull = _pull(ctx, choice, p, cost) if not local else None
        if pull is not None:  # the estimate's compute is what is left after the copy
            compute = terms.prefill_compute_s - pull.compute_saved_s
            terms = terms.model_copy(update={
                "prefill_compute_s": compute, "pull_s": pull.seconds,
                "total_s": terms.queue_s + pull.seconds + compute + terms.transfer_s
                + terms.admission_s})
        runners = tuple(Alternative(prefill=o.prefill, decode=o.decode, local_prefill=o.local,
                                    score=o.score, ttft_s=o.ttft_s) for o in choice.runners_up)
        return Decision(
            request_id=ctx.request.id, policy=self.policy.name,
            mode="local-prefill" if local else "disaggregated",
            prefill=_side(choice.decode if local else choice.prefill, ctx.cached, snap),
            decode=_side(choice.decode, ctx.cached, snap), transfer=transfer, pull=pull,
            estimate=terms,
            score=choice.score, runners_up=runners, considered=choice.considered,
            notes=choice.notes, decision_us=(time.perf_counter() - started) * 1e6)


def _same_workers(old: Snapshot, new: Snapshot) -> bool:
    """Whether ``new`` certainly has ``old``'s workers (ids, roles, GPUs) by position.

    Identity only, no per-worker comparison: the same workers tuple, or the same
    position map, which :meth:`Snapshot.updated` shares with the snapshot it patches
    (it refuses changes other than loads) and any other construction builds anew.
    """
    return old.workers is new.workers or old.position is new.position


def _pull(ctx: CycleContext, choice: PairChoice, target: int,
          cost: FabricCostModel) -> PrefixPull | None:
    """The decision's :class:`PrefixPull` (``None``: the choice pulls nothing)."""
    if choice.pull_from is None:
        return None
    source = ctx.snapshot.position[choice.pull_from.id]
    have = int(ctx.cached[target])
    hashes = ctx.request.block_hashes[have:choice.pull_blocks]
    if not hashes:
        return None
    seconds, bottleneck, links = pull_seconds(cost, ctx, source, target, choice.pull_blocks)
    saved = seconds + cost.pull_saving(ctx, source, target, choice.pull_blocks)
    return PrefixPull(source=choice.pull_from.id, source_gpus=choice.pull_from.gpus,
                      target=choice.prefill.id, block_hashes=hashes, blocks=len(hashes),
                      bytes=pull_bytes(ctx, target, choice.pull_blocks), seconds=seconds,
                      compute_saved_s=saved, links=links, bottleneck_gb_per_s=bottleneck)


def _record_under_way(under_way: PrefixesUnderWay, hashes: tuple[int, ...],
                      decision: Decision) -> None:
    """Record the blocks ``decision`` has computed (and copied) on its prefill worker and
    moved to its decode worker, and when its estimate has them valid there."""
    est, prefill, decode = decision.estimate, decision.prefill, decision.decode
    computed = est.queue_s + est.pull_s + est.prefill_compute_s
    under_way.add(prefill.worker, hashes, prefill.cached_blocks, computed)
    if decision.mode == "disaggregated":
        under_way.add(decode.worker, hashes, decode.cached_blocks, computed + est.transfer_s)


def _side(worker: Worker, cached: IntArray, snapshot: Snapshot) -> Side:
    return Side(worker=worker.id, gpus=worker.gpus,
                cached_blocks=int(cached[snapshot.position[worker.id]]))
