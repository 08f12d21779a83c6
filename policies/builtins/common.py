"""Plugins every policy shares: the KV-capacity filter, the max-score picker, the
two-stage (prefill profile, decode profile) handler, and candidate helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.contracts import (
    PairChoice,
    PairOption,
    ProfileOutcome,
    ProfileRunner,
    Refusal,
    ScoredWorker,
)
from policies.registry import NoParameters, PluginKind, PluginType, Registry
from policies.snapshot import BoolArray, CycleContext, IntArray, Stage, Worker


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def stage_candidates(ctx: CycleContext, stage: Stage) -> list[Worker]:
    """Workers that can serve ``stage``, narrowed to the request's pin if it has one."""
    pin = ctx.request.prefill_worker if stage is Stage.PREFILL else ctx.request.decode_worker
    if pin is not None:
        worker = ctx.snapshot.worker(pin)
        return [] if worker is None else [worker]
    snap = ctx.snapshot
    mask = snap.prefill_mask if stage is Stage.PREFILL else snap.decode_mask
    return list(compress(snap.workers, mask.tolist()))


def stage_positions(ctx: CycleContext, stage: Stage) -> IntArray:
    """Snapshot positions of :func:`stage_candidates`, without building a list."""
    snap = ctx.snapshot
    pin = ctx.request.prefill_worker if stage is Stage.PREFILL else ctx.request.decode_worker
    if pin is not None:
        found = snap.position.get(pin)
        return np.array([] if found is None else [found], dtype=np.int64)
    mask = snap.prefill_mask if stage is Stage.PREFILL else snap.decode_mask
    positions: IntArray = mask.nonzero()[0].astype(np.int64, copy=False)
    return positions


def stage_positions_few(ctx: CycleContext, stage: Stage) -> list[int]:
    """:func:`stage_positions` as a list, by a Python pass (for small snapshots)."""
    snap = ctx.snapshot
    pin = ctx.request.prefill_worker if stage is Stage.PREFILL else ctx.request.decode_worker
    if pin is not None:
        found = snap.position.get(pin)
        return [] if found is None else [found]
    mask = snap.prefill_mask if stage is Stage.PREFILL else snap.decode_mask
    return [i for i, ok in enumerate(mask.tolist()) if ok]


def fits_kv_few(ctx: CycleContext, positions: list[int], headroom: int = 0, *,
                promised: bool = False) -> list[int]:
    """The positions :func:`fits_kv` keeps, on Python ints (for a few positions)."""
    cached, free, blocks = ctx.cached, ctx.snapshot.free_kv, ctx.request.blocks
    owed = ctx.snapshot.promised_kv
    return [w for w in positions
            if free.item(w) - (owed.item(w) if promised else 0)
            >= max(blocks - cached.item(w), 0) + headroom]


def fits_kv(ctx: CycleContext, positions: IntArray, headroom: int = 0, *,
            promised: bool = False) -> BoolArray:
    """Which workers have free KV blocks for the part of the prompt they lack
    (``promised``: once the blocks promised to requests routed there are taken)."""
    need = np.maximum(ctx.request.blocks - ctx.cached[positions], 0)
    if headroom:
        need += headroom
    free = ctx.snapshot.free_kv[positions]
    if promised:
        free = free - ctx.snapshot.promised_kv[positions]
    fits: BoolArray = free >= need
    return fits


def blocks_needed(ctx: CycleContext, worker: Worker) -> int:
    """KV blocks ``worker`` must allocate for the request (it reuses what it holds)."""
    return max(ctx.request.blocks - ctx.cached_of(worker), 0)


def empty_reason(stage: Stage, outcome: ProfileOutcome | None, total: int) -> str:
    """Why a stage found no candidate, naming the filters that removed them."""
    if total == 0:
        return f"no {stage.value} worker in the snapshot (or the pinned worker is unknown)"
    removed = ", ".join(f"{name} removed {n}" for name, n in (outcome.removed.items()
                                                              if outcome else ()))
    return f"no {stage.value} worker of {total} passes the filters ({removed or 'none left'})"


class KvCapacityParams(_Params):
    """``headroom_blocks``: blocks to keep free beyond the request's own."""

    headroom_blocks: int = Field(default=0, ge=0)


class KvCapacityFilter:
    """Drops workers without free KV blocks for the part of the prompt they lack."""

    def __init__(self, name: str, params: KvCapacityParams) -> None:
        """Create the filter."""
        self.name = name
        self.params = params

    def filter(self, ctx: CycleContext, candidates: Sequence[Worker]) -> list[Worker]:
        """Workers whose free blocks cover what the request needs plus the headroom."""
        fits = self.mask(ctx, ctx.positions(candidates))
        return [w for w, ok in zip(candidates, fits, strict=True) if ok]

    def mask(self, ctx: CycleContext, positions: IntArray) -> BoolArray:
        """The same test over snapshot positions."""
        return fits_kv(ctx, positions, self.params.headroom_blocks)

    def keep_few(self, ctx: CycleContext, positions: list[int]) -> list[int]:
        """The same test over a few snapshot positions, on Python ints: those kept."""
        return fits_kv_few(ctx, positions, self.params.headroom_blocks)


class MaxScorePicker:
    """Picks the best-ranked candidate; ties go to the earlier candidate (repeatable)."""

    def __init__(self, name: str, params: NoParameters) -> None:
        """Create the picker."""
        self.name = name

    def pick(self, ctx: CycleContext, ranked: Sequence[ScoredWorker]) -> ScoredWorker | None:
        """The first of the ranking."""
        return ranked[0] if ranked else None


class TwoStageParams(_Params):
    """``order``: which side is chosen first; ``local_prefill_max_tokens``: with
    ``decode-first``, a decode worker missing fewer than this many prompt tokens
    prefills them itself (llm-d's P/D threshold; 0 turns it off)."""

    order: Literal["prefill-first", "decode-first"] = "prefill-first"
    local_prefill_max_tokens: int = Field(default=0, ge=0)


class TwoStageHandler:
    """Chooses one side with its profile, then the other knowing the first (``peer``).

    This is how the field routes P/D today (llm-d's P/D profile handler, Dynamo,
    SGLang): sides are chosen one after the other, never as a pair.
    """

    required_profiles = ("prefill", "decode")

    def __init__(self, name: str, params: TwoStageParams) -> None:
        """Create the handler."""
        self.name = name
        self.params = params

    def schedule(self, ctx: CycleContext,
                 profiles: Mapping[str, ProfileRunner]) -> PairChoice | Refusal:
        """Run the first stage, then the second with the first's pick as ``peer``."""
        first, second = ((Stage.DECODE, Stage.PREFILL) if self.params.order == "decode-first"
                         else (Stage.PREFILL, Stage.DECODE))
        run_one = self._stage(ctx, profiles, first, None)
        if isinstance(run_one, Refusal):
            return run_one
        one = run_one.picked
        assert one is not None  # _stage refuses when nothing was picked
        if first is Stage.DECODE and self._local(ctx, one.worker):
            return PairChoice(one.worker, one.worker, one.score, local=True, considered=1,
                              notes=("decode worker misses few tokens: it prefills locally",))
        run_two = self._stage(ctx, profiles, second, one.worker)
        if isinstance(run_two, Refusal):
            return run_two
        two = run_two.picked
        assert two is not None
        prefill, decode = (one, two) if first is Stage.PREFILL else (two, one)
        return PairChoice(prefill.worker, decode.worker, (one.score + two.score) / 2,
                          runners_up=_runners_up(first, one, two, run_two.ranked),
                          notes=(f"{first.value} chosen first, then {second.value}",),
                          considered=len(run_one.ranked) + len(run_two.ranked))

    def _stage(self, ctx: CycleContext, profiles: Mapping[str, ProfileRunner], stage: Stage,
               peer: Worker | None) -> ProfileOutcome | Refusal:
        candidates = stage_candidates(ctx, stage)
        outcome = profiles[stage.value].run(ctx.for_stage(stage, peer), candidates)
        if outcome.picked is None:
            return Refusal((empty_reason(stage, outcome, len(candidates)),))
        return outcome

    def _local(self, ctx: CycleContext, decode: Worker) -> bool:
        limit = self.params.local_prefill_max_tokens
        missing = ctx.request.prompt_tokens - ctx.cached_of(decode) * ctx.snapshot.block_tokens
        return limit > 0 and missing < limit



def _runners_up(first: Stage, one: ScoredWorker, two: ScoredWorker,
                ranked: Sequence[ScoredWorker]) -> tuple[PairOption, ...]:
    """The second stage's next-best candidates, each paired with the first pick."""
    options = []
    for other in ranked[:4]:
        if other.worker.id == two.worker.id:
            continue
        p, d = (one, other) if first is Stage.PREFILL else (other, one)
        options.append(PairOption(p.worker.id, d.worker.id, (one.score + other.score) / 2))
    return tuple(options[:3])


def register(registry: Registry) -> None:
    """Register the shared plugins."""
    registry.register(PluginType("kv-capacity-filter", PluginKind.FILTER, KvCapacityFilter,
                                 KvCapacityParams, "drops workers without free KV blocks"))
    registry.register(PluginType("max-score-picker", PluginKind.PICKER, MaxScorePicker,
                                 NoParameters, "picks the highest total score"))
    registry.register(PluginType("two-stage-handler", PluginKind.HANDLER, TwoStageHandler,
                                 TwoStageParams, "chooses prefill and decode one after the other"))
