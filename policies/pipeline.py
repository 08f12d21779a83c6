"""A scheduling profile: filters, then weighted scorers clamped to [0, 1], then a picker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.contracts import (
    Filter,
    Picker,
    ProfileOutcome,
    ScoredWorker,
    Scorer,
    clamp,
)
from policies.snapshot import CycleContext, IntArray, Worker


@dataclass(frozen=True)
class WeightedScorer:
    """A scorer and its weight in the profile's sum (weight ≥ 0)."""

    scorer: Scorer
    weight: float


@dataclass(frozen=True)
class SchedulingProfile:
    """One profile of a policy; the total score is the weighted mean of the scorers."""

    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker

    def filter(self, ctx: CycleContext, candidates: Sequence[Worker]) -> list[Worker]:
        """Apply the filters in order."""
        kept = list(candidates)
        for plugin in self.filters:
            kept = plugin.filter(ctx, kept)
        return kept

    def filter_positions(self, ctx: CycleContext, positions: IntArray) -> IntArray:
        """Apply the filters to snapshot positions (vector filters without a list)."""
        for plugin in self.filters:
            # getattr, not isinstance: a runtime protocol check costs ~10 µs per call.
            mask = getattr(plugin, "mask", None)
            if mask is not None:
                positions = positions[mask(ctx, positions)]
            else:
                kept = plugin.filter(ctx, [ctx.snapshot.workers[int(i)] for i in positions])
                positions = ctx.positions(kept)
        return positions

    def filter_few(self, ctx: CycleContext, positions: list[int]) -> list[int] | None:
        """:meth:`filter_positions` over a few positions on Python ints, when every
        filter has a ``keep_few`` (None: one has not; use :meth:`filter_positions`)."""
        for plugin in self.filters:
            keep = getattr(plugin, "keep_few", None)
            if keep is None:
                return None
            positions = keep(ctx, positions)
        return positions

    def run(self, ctx: CycleContext, candidates: Sequence[Worker]) -> ProfileOutcome:
        """Filter, score (ranking best first, ties in candidate order) and pick."""
        removed: dict[str, int] = {}
        kept = list(candidates)
        for plugin in self.filters:
            before = len(kept)
            kept = plugin.filter(ctx, kept)
            if len(kept) < before:
                removed[plugin.name] = before - len(kept)
        ranked = self.rank(ctx, kept)
        return ProfileOutcome(ranked, self.picker.pick(ctx, ranked) if ranked else None, removed)

    def rank(self, ctx: CycleContext, candidates: Sequence[Worker]) -> tuple[ScoredWorker, ...]:
        """Score ``candidates`` and sort them, best first (stable)."""
        total_weight = sum(ws.weight for ws in self.scorers)
        parts: list[dict[str, float]] = [{} for _ in candidates]
        for ws in self.scorers:
            scores = ws.scorer.score(ctx, candidates)
            for i, worker in enumerate(candidates):
                parts[i][ws.scorer.name] = clamp(scores.get(worker.id, 0.0))
        scored = [ScoredWorker(w, self._total(p, total_weight), p)
                  for w, p in zip(candidates, parts, strict=True)]
        order = sorted(range(len(scored)), key=lambda i: -scored[i].score)
        return tuple(scored[i] for i in order)

    def _total(self, parts: dict[str, float], total_weight: float) -> float:
        if total_weight <= 0:
            return 0.0
        weights = {ws.scorer.name: ws.weight for ws in self.scorers}
        return sum(weights[name] * value for name, value in parts.items()) / total_weight
