"""``fabric-cost-handler``: toposched's joint (prefill, decode) choice — the default policy.

Where the baselines choose one side and then the other, this handler prices whole
pairs: for every candidate pair it asks the context's
:class:`~policies.contracts.PairCostModel` for the time to first token — queue wait
and compute for the uncached part at the prefill worker, transfer of the blocks the
decode worker lacks over the fabric path between them, admission at the decode
worker — adds the decode side's price (the batch slowdown the request takes and
gives at the decode worker, and its KV occupancy: ``decode_costs`` of the cost
model) and takes the cheapest. Placement pairings and the request's session make
a pair's TTFT estimate up to ``paired_bonus`` / ``session_bonus`` lower; the
decode-side price is not discounted (a pairing says where KV should go, not that the
requests decoding there are slowed less, and a discount of that price, often
seconds, would let a request wait seconds longer in a paired prefill queue).

*Conditional disaggregation*: a decode worker that misses at most
``local_prefill_max_tokens`` prompt tokens, or already holds ``local_prefill_min_hit``
of the prompt, may prefill the rest itself; that option competes on the same cost
plus the stall its prefill causes every request the worker runs (``local_stall``),
so it wins only where that stall is cheaper than queueing and moving the KV.

*Pruning* keeps big clusters fast: the ``top_k_prefill`` prefill workers by cache
hit and the same number by load; every decode worker sharing a host or NVLink domain
with one of them, the ``top_k_decode`` best by cache hit and by load within their
racks and in the whole cluster, and placement / session partners. Sides with fewer
than ``exhaustive_below`` candidates are not pruned.

*Prefix pull*: where the cost model offers it (:class:`~policies.contracts.PrefixPullModel`,
the router's ``CostParams.prefix_pull``), a prefill candidate lacking a prefix that
another worker holds may copy it over the fabric before its prefill; its pairs cost
the pull's saving less (compute saved minus the copy's time, only where positive),
and a choice that uses it names the holder (``PairChoice.pull_from``). A worker
prefilling for itself (local, aggregated) does not pull.

Link sharing with transfers in flight only makes a pair dearer, so pairs are
re-costed with it in order of their plain cost until the next plain cost is above
the best re-costed one: among the priced options the result is exact.

*Few candidates* (at most the cost model's ``few_max`` a side, none pruned; a gateway in
front of one prefill and one decode engine): the same filtering, prices and choice on
Python numbers, operation for operation in the array path's order, so the same IEEE
results (``tests/policies/test_fabric_cost_few.py``); on 1-4 elements numpy's per-call
overhead is most of the time. Larger candidate sets stay on arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.builtins.common import (
    empty_reason,
    fits_kv,
    fits_kv_few,
    stage_positions,
    stage_positions_few,
)
from policies.contracts import (
    FewPairCostModel,
    PairChoice,
    PairOption,
    PrefixPullModel,
    ProfileRunner,
    PullPlan,
    Refusal,
)
from policies.registry import PluginKind, PluginType, Registry
from policies.snapshot import (
    BoolArray,
    CycleContext,
    FloatArray,
    IntArray,
    Snapshot,
    Stage,
    Worker,
)


class FabricCostParams(BaseModel):
    """Tuning of the joint handler (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    top_k_prefill: int = Field(default=8, ge=1)
    top_k_decode: int = Field(default=16, ge=1)
    exhaustive_below: int = Field(default=32, ge=0)
    local_prefill_max_tokens: int = Field(default=512, ge=0)
    local_prefill_min_hit: float = Field(default=0.5, gt=0.0, le=1.0)
    paired_bonus: float = Field(default=0.1, ge=0.0, lt=1.0)
    session_bonus: float = Field(default=0.2, ge=0.0, lt=1.0)
    runners_up: int = Field(default=3, ge=0)


@dataclass(frozen=True, slots=True)
class _Options:
    """The priced options: each of ``local`` prefilling itself, then every pair of the
    ``prefill`` × ``decode`` grid row by row.

    ``cost`` (the TTFT estimate times the bonus factor, plus the decode-side price)
    is flat over both parts; the workers and the bonus factor of an option are looked
    up (:meth:`at`, :meth:`factor_at`) only for the few options a choice shows.
    """

    local: IntArray
    local_factor: FloatArray
    local_extra: FloatArray
    prefill: IntArray
    decode: IntArray
    factor: FloatArray
    extra: FloatArray
    prefill_extra: FloatArray
    cost: FloatArray
    #: The prefix pull of each ``prefill`` row (``None``: no pulls priced).
    pull: PullPlan | None = None

    def row_at(self, i: int) -> int | None:
        """The ``prefill`` row of pair option ``i`` (``None``: a local option)."""
        if i < len(self.local):
            return None
        return (i - len(self.local)) // len(self.decode)

    @property
    def size(self) -> int:
        """Number of options."""
        return int(self.cost.size)

    def order(self) -> list[int]:
        """Option indices by cost, ties in option order (NaN last)."""
        result: list[int] = self.cost.argsort(kind="stable").tolist()
        return result

    def at(self, i: int) -> tuple[int, int, bool]:
        """Prefill position, decode position and local flag of option ``i``."""
        if i < len(self.local):
            d = int(self.local[i])
            return d, d, True
        row, col = divmod(i - len(self.local), len(self.decode))
        p, d = int(self.prefill[row]), int(self.decode[col])
        return p, d, p == d

    def factor_at(self, i: int) -> float:
        """The bonus factor the TTFT estimate of option ``i`` carries."""
        if i < len(self.local):
            return float(self.local_factor[i])
        row, col = divmod(i - len(self.local), len(self.decode))
        return float(self.factor[row, col])

    def extra_at(self, i: int) -> float:
        """The decode-side price (not TTFT) in the cost of option ``i``, before bonuses."""
        if i < len(self.local):
            return float(self.local_extra[i])
        row, col = divmod(i - len(self.local), len(self.decode))
        return float(self.extra[col] + self.prefill_extra[row])


@dataclass(frozen=True, slots=True)
class _FewOptions:
    """:class:`_Options` of a few candidates on Python lists and floats (``factor``:
    rows prefill, columns decode)."""

    local: list[int]
    local_factor: list[float]
    local_extra: list[float]
    prefill: list[int]
    decode: list[int]
    factor: list[list[float]]
    extra: list[float]
    prefill_extra: list[float]
    cost: list[float]
    #: No prefix pulls are priced on this path (:meth:`FabricCostHandler._schedule_few`).
    pull: PullPlan | None = None

    @property
    def size(self) -> int:
        """Number of options."""
        return len(self.cost)

    def row_at(self, i: int) -> int | None:
        """The ``prefill`` row of pair option ``i`` (``None``: a local option)."""
        if i < len(self.local):
            return None
        return (i - len(self.local)) // len(self.decode)

    def order(self) -> list[int]:
        """Option indices by cost, ties in option order, NaN last: numpy's stable argsort."""
        cost = self.cost
        return sorted(range(len(cost)),
                      key=lambda i: (True, 0.0) if cost[i] != cost[i] else (False, cost[i]))

    def at(self, i: int) -> tuple[int, int, bool]:
        """Prefill position, decode position and local flag of option ``i``."""
        if i < len(self.local):
            d = self.local[i]
            return d, d, True
        row, col = divmod(i - len(self.local), len(self.decode))
        p, d = self.prefill[row], self.decode[col]
        return p, d, p == d

    def factor_at(self, i: int) -> float:
        """The bonus factor the TTFT estimate of option ``i`` carries."""
        if i < len(self.local):
            return self.local_factor[i]
        row, col = divmod(i - len(self.local), len(self.decode))
        return self.factor[row][col]

    def extra_at(self, i: int) -> float:
        """The decode-side price (not TTFT) in the cost of option ``i``, before bonuses."""
        if i < len(self.local):
            return self.local_extra[i]
        row, col = divmod(i - len(self.local), len(self.decode))
        return self.extra[col] + self.prefill_extra[row]


class FabricCostHandler:
    """Chooses the (prefill, decode) pair with the lowest estimated TTFT."""

    required_profiles: tuple[str, ...] = ()

    def __init__(self, name: str, params: FabricCostParams) -> None:
        """Create the handler."""
        self.name = name
        self.params = params

    def schedule(self, ctx: CycleContext,
                 profiles: Mapping[str, ProfileRunner]) -> PairChoice | Refusal:
        """Price the pruned pairs and the local-prefill options; return the cheapest."""
        # getattr, not isinstance: a runtime protocol check costs ~10 us a call
        few = min(getattr(ctx.cost, "few_max", 0), self.params.exhaustive_below)
        sides = _filtered_few(ctx, profiles) if len(ctx.snapshot.workers) <= 2 * few else None
        if sides is None:
            p_all = _filtered(ctx, profiles, Stage.PREFILL)
            d_all = _filtered(ctx, profiles, Stage.DECODE)
        else:
            p_all, d_all = (np.array(side, dtype=np.int64) for side in sides)
        if len(p_all) <= few and len(d_all) <= few:
            choice = self._schedule_few(ctx, cast(FewPairCostModel, ctx.cost), p_all, d_all)
            if choice is not None:  # None: prefix pulls are priced (on arrays only)
                return choice
        d_fit = d_all[fits_kv(ctx, d_all)]
        # Workers with room once the KV promised to them lands, where there are some:
        # elsewhere the request would wait for blocks after its prefill.
        d_room = d_fit[fits_kv(ctx, d_fit, promised=True)]
        d_fit = d_room if len(d_room) else d_fit
        if len(d_fit) == 0:
            return _no_decode_room(ctx)
        p_pos = self._prune_prefill(ctx, p_all)
        d_pos = self._prune_decode(ctx, p_pos, d_fit)
        options = self._options(ctx, p_pos, d_pos)
        if options.size == 0:
            return Refusal(("no prefill worker, and no decode worker may prefill locally",))
        return self._choose(ctx, options, len(p_all), len(d_fit))

    def _schedule_few(self, ctx: CycleContext, cost: FewPairCostModel, p_all: IntArray,
                      d_all: IntArray) -> PairChoice | Refusal | None:
        """:meth:`schedule` for a few candidates (none pruned) on Python numbers: the
        same decisions, explanations and floats as the array path, fewer numpy calls;
        None where the cost model prices prefix pulls (the array path does)."""
        pull_plan = getattr(cost, "pull_plan", None)
        if pull_plan is not None and len(p_all) and pull_plan(ctx, p_all) is not None:
            return None
        d_list = d_all.tolist()
        d_fit = fits_kv_few(ctx, d_list)
        d_fit = fits_kv_few(ctx, d_fit, promised=True) or d_fit
        if not d_fit:
            return _no_decode_room(ctx)
        d_pos = d_all if len(d_fit) == len(d_list) else np.array(d_fit, dtype=np.int64)
        options = self._options_few(ctx, cost, p_all, d_pos)
        if options.size == 0:
            return Refusal(("no prefill worker, and no decode worker may prefill locally",))
        return self._choose(ctx, options, len(p_all), len(d_fit))

    # -- candidates ---------------------------------------------------------------
    def _prune_prefill(self, ctx: CycleContext, pos: IntArray) -> IntArray:
        if len(pos) <= self.params.exhaustive_below:
            return pos
        snap, k = ctx.snapshot, self.params.top_k_prefill
        wait = snap.queued[pos] / snap.prefill_rate[pos]
        cached = ctx.cached[pos].astype(np.float64)
        if np.isnan(wait).any():  # 0 / 0: the partial selection places NaN its own way
            kept = np.concatenate((_top_k(cached, -wait, k), _top_k(-wait, cached, k)))
        else:
            less = -cached
            kept = np.concatenate((_first_k(less, wait, k), _first_k(wait, less, k)))
        return _union(snap, pos[kept], self._session_side(ctx, 0))

    def _prune_decode(self, ctx: CycleContext, p_pos: IntArray, pos: IntArray) -> IntArray:
        if len(pos) <= self.params.exhaustive_below:
            return pos
        snap, k = ctx.snapshot, self.params.top_k_decode
        running = snap.running[pos].astype(np.float64)
        less = -ctx.cached[pos].astype(np.float64)
        # Every decode worker one NVLink hop from a kept prefill worker; from the racks
        # of those workers, and from the whole cluster, the best k by cache and by load.
        # One order per criterion serves both: a rack's best k come first in it.
        by_cache, by_load = np.lexsort((running, less)), np.lexsort((less, running))
        rack = _near(snap.domains.get("rack"), p_pos, pos)
        keep = (_near(snap.domains.get("host"), p_pos, pos)
                | _near(snap.domains.get("nvlink_domain"), p_pos, pos))
        keep[np.concatenate((by_cache[:k], by_load[:k], by_cache[rack[by_cache]][:k],
                             by_load[rack[by_load]][:k]))] = True
        partners = self._partners(ctx, p_pos)
        if partners:  # those among the candidates
            wanted = np.zeros(len(snap.workers), dtype=bool)
            wanted[partners] = True
            keep |= wanted[pos]
        return _union(snap, pos[keep], self._session_side(ctx, 1))

    def _session_side(self, ctx: CycleContext, side: int) -> int | None:
        if ctx.session_pair is None:
            return None
        return ctx.snapshot.position.get(ctx.session_pair[side])

    def _partners(self, ctx: CycleContext, p_pos: IntArray) -> list[int]:
        """Positions of the placement partners of the prefill candidates."""
        snap = ctx.snapshot
        if not snap.partners:
            return []
        return [snap.position[d] for p in p_pos.tolist()
                for d, _ in snap.partners.get(snap.workers[p].id, ()) if d in snap.position]

    # -- options -------------------------------------------------------------------
    def _options(self, ctx: CycleContext, p_pos: IntArray, d_pos: IntArray) -> _Options:
        # Local options first: on equal cost, not moving anything wins the tie.
        extra = ctx.cost.decode_costs(ctx, d_pos)
        # A prefill worker that also decodes (aggregated) stalls its own batch.
        stall = ctx.cost.local_stall(ctx, p_pos)
        local, local_factor, local_extra, local_cost = self._local_options(
            ctx, p_pos, d_pos, extra)
        # an optional part of the cost model (PrefixPullModel); getattr, not isinstance:
        # a protocol check costs ~4 us on every decision
        pull_plan = getattr(ctx.cost, "pull_plan", None)
        plan: PullPlan | None = (pull_plan(ctx, p_pos) if pull_plan is not None and len(p_pos)
                                 else None)
        factor, cost = self._pair_options(ctx, p_pos, d_pos, extra, stall, plan)
        return _Options(local, local_factor, local_extra, p_pos, d_pos, factor, extra, stall,
                        np.concatenate((local_cost, cost)), plan)

    def _options_few(self, ctx: CycleContext, cost: FewPairCostModel, p_pos: IntArray,
                     d_pos: IntArray) -> _FewOptions:
        """:meth:`_options` on Python floats, term by term in the same order."""
        p_list, d_list = p_pos.tolist(), d_pos.tolist()
        extra = cost.decode_costs_few(ctx, d_list)
        stall = cost.local_stall_few(ctx, p_list)
        eligible = self._local_eligible(ctx, d_list, bool(p_list))
        local = [d_list[j] for j in eligible]
        local_factor = [1.0] * len(local)
        if ctx.session_pair is not None:
            session_decode = ctx.snapshot.position.get(ctx.session_pair[1], -1)
            local_factor = [1.0 - self.params.session_bonus if d == session_decode else 1.0
                            for d in local]
        price = [extra[j] + s for j, s in zip(eligible, cost.local_stall_few(ctx, local),
                                              strict=True)]
        costs = [c * f + x for c, f, x in zip(cost.local_costs_few(ctx, local), local_factor,
                                              price, strict=True)]
        factor: list[list[float]] = [[1.0] * len(d_list) for _ in p_list]
        if p_list:
            for i, j, bonus in self._bonus_cells(ctx, p_list, d_list):
                factor[i][j] *= bonus
            for i, row in enumerate(cost.pair_totals_few(ctx, p_pos, d_pos)):
                f_row, s = factor[i], stall[i]
                costs += [ttft * f_row[j] + extra[j] + s for j, ttft in enumerate(row)]
        return _FewOptions(local, local_factor, price, p_list, d_list, factor, extra, stall,
                           costs)

    def _local_eligible(self, ctx: CycleContext, d_list: list[int],
                        prefill: bool) -> list[int]:
        """Indices into ``d_list`` of the decode workers that may prefill themselves
        (:meth:`_local_options`' rule on Python numbers)."""
        cached, block_tokens = ctx.cached, ctx.snapshot.block_tokens
        tokens, blocks = ctx.request.prompt_tokens, max(ctx.request.blocks, 1)
        most, min_hit = self.params.local_prefill_max_tokens, self.params.local_prefill_min_hit
        return [j for j, d in enumerate(d_list)
                if tokens - cached.item(d) * block_tokens <= most
                or cached.item(d) / blocks >= min_hit or not prefill]

    def _pair_options(self, ctx: CycleContext, p_pos: IntArray, d_pos: IntArray,
                      extra: FloatArray, stall: FloatArray,
                      plan: PullPlan | None = None) -> tuple[FloatArray, FloatArray]:
        """The bonus factor (rows: prefill, columns: decode) and flat cost of each pair."""
        if len(p_pos) == 0:
            return np.empty((0, len(d_pos))), np.empty(0)
        ttft = ctx.cost.pair_costs(ctx, p_pos, d_pos).total_s
        if plan is not None:  # a pull's saving, not where the pair is one worker (local)
            ttft = ttft - np.where(p_pos[:, None] == d_pos, 0.0, plan.saving_s[:, None])
        factor = np.ones_like(ttft)
        self._apply_pairings(ctx, p_pos, d_pos, factor)
        self._apply_session(ctx, p_pos, d_pos, factor)
        return factor, (ttft * factor + extra + stall[:, None]).ravel()

    def _local_options(self, ctx: CycleContext, p_pos: IntArray, d_pos: IntArray,
                       extra: FloatArray) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        """Decode workers that may prefill themselves, their bonus factor, decode-side
        price (``extra`` plus the stall of their running requests) and cost."""
        snap, request = ctx.snapshot, ctx.request
        cached = ctx.cached[d_pos]
        missing = request.prompt_tokens - cached * snap.block_tokens
        hit = cached / max(request.blocks, 1)
        eligible = ((missing <= self.params.local_prefill_max_tokens)
                    | (hit >= self.params.local_prefill_min_hit) | (len(p_pos) == 0))
        local = d_pos[eligible]
        factor = np.ones(len(local))
        if ctx.session_pair is not None:
            session_decode = ctx.snapshot.position.get(ctx.session_pair[1], -1)
            factor[local == session_decode] = 1.0 - self.params.session_bonus
        price = extra[eligible] + ctx.cost.local_stall(ctx, local)
        return local, factor, price, ctx.cost.local_costs(ctx, local) * factor + price

    def _apply_pairings(self, ctx: CycleContext, p_pos: IntArray, d_pos: IntArray,
                        factor: FloatArray) -> None:
        for i, j, bonus in self._pairing_cells(ctx, p_pos.tolist(), d_pos.tolist()):
            factor[i, j] *= bonus

    def _pairing_cells(self, ctx: CycleContext, p_list: list[int], d_list: list[int]
                       ) -> Iterator[tuple[int, int, float]]:
        """(row, column, factor) of each placement pairing among the candidates."""
        snap = ctx.snapshot
        if not snap.partners or self.params.paired_bonus == 0:
            return
        col = {d: j for j, d in enumerate(d_list)}
        for i, p in enumerate(p_list):
            for decode, weight in snap.partners.get(snap.workers[p].id, ()):
                j = col.get(snap.position.get(decode, -1))
                if j is not None:
                    yield i, j, 1.0 - self.params.paired_bonus * min(max(weight, 0.0), 1.0)

    def _bonus_cells(self, ctx: CycleContext, p_list: list[int], d_list: list[int]
                     ) -> Iterator[tuple[int, int, float]]:
        """:meth:`_pairing_cells`, then the session's pair (:meth:`_apply_session`)."""
        yield from self._pairing_cells(ctx, p_list, d_list)
        if ctx.session_pair is None or self.params.session_bonus == 0:
            return
        sp, sd = (ctx.snapshot.position.get(w, -1) for w in ctx.session_pair)
        if sp in p_list and sd in d_list:
            yield p_list.index(sp), d_list.index(sd), 1.0 - self.params.session_bonus

    def _apply_session(self, ctx: CycleContext, p_pos: IntArray, d_pos: IntArray,
                       factor: FloatArray) -> None:
        if ctx.session_pair is None or self.params.session_bonus == 0:
            return
        sp, sd = (ctx.snapshot.position.get(w, -1) for w in ctx.session_pair)
        factor[np.ix_(p_pos == sp, d_pos == sd)] *= 1.0 - self.params.session_bonus

    # -- choice ----------------------------------------------------------------------
    def _choose(self, ctx: CycleContext, options: _Options | _FewOptions, n_prefill: int,
                n_decode: int) -> PairChoice:
        order = options.order()
        refined, recosted = self._refine(ctx, options, order)
        ranked = sorted(refined.items(), key=lambda item: (item[1], item[0]))
        best_i, best_cost = ranked[0]
        snap = ctx.snapshot
        p, d, local = options.at(best_i)
        pick = snap.workers[p], snap.workers[d]
        extra = order[: len(refined) + self.params.runners_up]
        shown = [i for i, _ in ranked[1:]] + [i for i in extra if i not in refined]
        runners = tuple(self._option(ctx, options, i, best_cost, refined.get(i))
                        for i in shown[: self.params.runners_up])
        notes: tuple[str, ...] = (
            f"priced {options.size} options from {n_prefill} prefill × {n_decode} "
            f"decode candidates", f"{recosted} re-costed with in-flight link load")
        if local:
            notes += (self._local_reason(ctx, pick[1], n_prefill),)
        source, blocks = self._pull_of(ctx, options, best_i)
        if source is not None:
            notes += (f"{pick[0].id} copies {blocks - ctx.cached_of(pick[0])} cached prefix "
                      f"blocks from {source.id} instead of computing them",)
        return PairChoice(pick[0], pick[1], 1.0, local=local,
                          runners_up=runners, notes=notes, considered=options.size,
                          pull_from=source, pull_blocks=blocks)

    def _pull_of(self, ctx: CycleContext, options: _Options | _FewOptions,
                 i: int) -> tuple[Worker | None, int]:
        """The holder option ``i`` pulls from and the blocks it holds after (None, 0:
        no pull), checked against link sharing as its cost was."""
        row, plan = options.row_at(i), options.pull
        if plan is None or row is None or options.at(i)[2] or plan.source[row] < 0:
            return None, 0
        source, blocks = int(plan.source[row]), int(plan.blocks[row])
        model = cast(PrefixPullModel, ctx.cost)  # it made the plan
        if (ctx.snapshot.link_load
                and model.pull_saving(ctx, source, int(options.prefill[row]), blocks) <= 0):
            return None, 0
        return ctx.snapshot.workers[source], blocks

    def _local_reason(self, ctx: CycleContext, decode: Worker, n_prefill: int) -> str:
        cached = ctx.cached_of(decode)
        missing = max(ctx.request.prompt_tokens - cached * ctx.snapshot.block_tokens, 0)
        why = ("no prefill worker can take the request" if n_prefill == 0 else
               f"it misses {missing} prompt tokens and holds {cached} of "
               f"{ctx.request.blocks} blocks")
        return f"{decode.id} prefills locally: {why}; that is the cheapest option"

    def _refine(self, ctx: CycleContext, options: _Options | _FewOptions,
                order: list[int]) -> tuple[dict[int, float], int]:
        """Exact re-costing with link sharing, in order of plain cost (a lower bound)."""
        refined: dict[int, float] = {}
        best, recosted = np.inf, 0
        costs, loaded = options.cost, bool(ctx.snapshot.link_load)
        for i in order:
            # Re-costing never lowers a cost, and ties go to the earlier option.
            if costs[i] >= best and len(refined) > self.params.runners_up:
                break
            cost = float(costs[i])
            if loaded:
                p, d, local = options.at(i)
                if not local:
                    ttft = ctx.cost.contended_total(ctx, p, d) - self._saving(ctx, options, i)
                    cost = ttft * options.factor_at(i) + options.extra_at(i)
                    recosted += 1
            refined[i] = cost
            best = min(best, cost)
        return refined, recosted

    def _saving(self, ctx: CycleContext, options: _Options | _FewOptions, i: int) -> float:
        """The pull saving of pair option ``i`` with link sharing (0: no pull)."""
        row, plan = options.row_at(i), options.pull
        if plan is None or row is None or plan.source[row] < 0:
            return 0.0
        model = cast(PrefixPullModel, ctx.cost)  # it made the plan
        return max(model.pull_saving(ctx, int(plan.source[row]), int(options.prefill[row]),
                                     int(plan.blocks[row])), 0.0)

    def _option(self, ctx: CycleContext, options: _Options | _FewOptions, i: int,
                best: float,
                cost: float | None) -> PairOption:
        value = float(options.cost[i]) if cost is None else cost
        snap = ctx.snapshot
        p, d, local = options.at(i)
        # The score compares the costs the choice used (bonuses and the decode-side
        # price included); ttft_s is the plain TTFT estimate.
        return PairOption(snap.workers[p].id, snap.workers[d].id,
                          best / value if value > 0 else 1.0, local,
                          (value - options.extra_at(i)) / options.factor_at(i))


def _first_k(first: FloatArray, then: FloatArray, k: int) -> IntArray:
    """Indices of the ``k`` smallest by ``first``, ties by ``then``, then by index.

    The same set as :func:`_top_k` of the negated keys (for keys without NaN): one
    stable sort costs less than its partial selection at a few hundred candidates.
    """
    result: IntArray = np.lexsort((then, first))[:k]
    return result


def _top_k(primary: FloatArray, secondary: FloatArray, k: int) -> IntArray:
    """Indices of the ``k`` largest by ``primary``, ties by ``secondary`` (then index).

    A partial selection (``argpartition``) then a sort of the few kept: the whole
    candidate list is never sorted.
    """
    if len(primary) <= k:
        return np.lexsort((secondary, primary))[::-1].astype(np.int64)
    threshold = np.partition(primary, len(primary) - k)[len(primary) - k]
    chosen = np.flatnonzero(primary >= threshold)
    order = np.lexsort((-chosen, secondary[chosen], primary[chosen]))[::-1][:k]
    result: IntArray = chosen[order]
    return result


def _union(snap: Snapshot, positions: IntArray, extra: int | None) -> IntArray:
    """``positions`` and ``extra`` (if any), sorted and unique."""
    # A mark per snapshot worker: cheaper than np.unique at a few hundred workers.
    mark = np.zeros(len(snap.workers), dtype=bool)
    mark[positions] = True
    if extra is not None:
        mark[extra] = True
    result: IntArray = mark.nonzero()[0].astype(np.int64, copy=False)
    return result


def _near(ids: IntArray | None, p_pos: IntArray, pos: IntArray) -> BoolArray:
    """Which of ``pos`` share a domain (``ids``: one per worker, -1 none) with ``p_pos``."""
    if ids is None or len(ids) == 0 or len(p_pos) == 0:
        return np.zeros(len(pos), dtype=bool)
    near = ids[p_pos]
    shared = np.zeros(int(ids.max()) + 2, dtype=bool)  # the last slot stands for -1
    shared[near[near >= 0]] = True
    result: BoolArray = shared[ids[pos]]
    return result


def _no_decode_room(ctx: CycleContext) -> Refusal:
    """The refusal when no decode candidate has free KV blocks for the request."""
    total = len(stage_positions(ctx, Stage.DECODE))
    reason = empty_reason(Stage.DECODE, None, total)
    if total:
        reason = f"no decode worker of {total} has free KV blocks for the request"
    return Refusal((reason,))


def _filtered_few(ctx: CycleContext, profiles: Mapping[str, ProfileRunner]
                  ) -> tuple[list[int], list[int]] | None:
    """:func:`_filtered` of both sides as lists, by Python passes (a small snapshot), when
    the profiles can filter so (``filter_few``); else None."""
    sides = []
    for stage in (Stage.PREFILL, Stage.DECODE):
        positions: list[int] | None = stage_positions_few(ctx, stage)
        profile = profiles.get(stage.value)
        if profile is not None:
            few = getattr(profile, "filter_few", None)
            positions = None if few is None else few(ctx.for_stage(stage), positions)
        if positions is None:
            return None
        sides.append(positions)
    return sides[0], sides[1]


def _filtered(ctx: CycleContext, profiles: Mapping[str, ProfileRunner],
              stage: Stage) -> IntArray:
    positions = stage_positions(ctx, stage)
    profile = profiles.get(stage.value)
    if profile is None:
        return positions
    return profile.filter_positions(ctx.for_stage(stage), positions)


def register(registry: Registry) -> None:
    """Register ``fabric-cost-handler``."""
    registry.register(PluginType("fabric-cost-handler", PluginKind.HANDLER, FabricCostHandler,
                                 FabricCostParams, "joint (prefill, decode) choice by TTFT"))
