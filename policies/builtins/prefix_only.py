"""Cache-aware routing without the fabric: ``prefix-scorer`` and ``cache-aware-picker``.

``prefix-scorer`` gives the fraction of the request's block chain a worker already
holds (llm-d's prefix-cache scorer). ``cache-aware-picker`` follows SGLang's
gateway: when the load is badly balanced it sends the request to the least loaded
worker; otherwise to the worker with the longest cached prefix if that covers more
than ``cache_threshold`` of the prompt, and else to the worker with the smallest
cache (SGLang's smallest radix tree; ties: more free KV blocks, fewer running
requests). Load is running requests, as there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from policies.contracts import ScoredWorker
from policies.registry import NoParameters, PluginKind, PluginType, Registry
from policies.snapshot import CycleContext, Worker


class PrefixScorer:
    """Fraction of the request's blocks the worker holds as a leading run."""

    def __init__(self, name: str, params: NoParameters) -> None:
        """Create the scorer."""
        self.name = name

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        """``cached blocks / request blocks`` per candidate (0 for an empty request)."""
        total = ctx.request.blocks
        if total == 0:
            return {w.id: 0.0 for w in candidates}
        return {w.id: ctx.cached_of(w) / total for w in candidates}


class CacheAwareParams(BaseModel):
    """Thresholds of the cache-aware rule (loads in running requests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cache_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    balance_abs_threshold: int = Field(default=32, ge=0)
    balance_rel_threshold: float = Field(default=1.0001, ge=1.0)


class CacheAwarePicker:
    """SGLang's cache-aware choice: balance first, then prefix, then the smallest cache."""

    def __init__(self, name: str, params: CacheAwareParams) -> None:
        """Create the picker."""
        self.name = name
        self.params = params

    def pick(self, ctx: CycleContext, ranked: Sequence[ScoredWorker]) -> ScoredWorker | None:
        """Apply the rule; every tie goes to the earlier worker in snapshot order."""
        if not ranked:
            return None
        ordered = sorted(ranked, key=lambda s: ctx.snapshot.position[s.worker.id])
        loads = [s.worker.running_requests for s in ordered]
        if self._imbalanced(max(loads), min(loads)):
            return ordered[loads.index(min(loads))]
        hits = [ctx.cached_of(s.worker) for s in ordered]
        best = max(hits)
        if ctx.request.blocks and best / ctx.request.blocks > self.params.cache_threshold:
            return ordered[hits.index(best)]
        return min(ordered, key=lambda s: (s.worker.cached_kv_blocks, -s.worker.free_kv_blocks,
                                           s.worker.running_requests))

    def _imbalanced(self, high: int, low: int) -> bool:
        p = self.params
        return high - low > p.balance_abs_threshold and high > low * p.balance_rel_threshold


def register(registry: Registry) -> None:
    """Register ``prefix-scorer`` and ``cache-aware-picker``."""
    registry.register(PluginType("prefix-scorer", PluginKind.SCORER, PrefixScorer,
                                 NoParameters, "fraction of the prompt already cached"))
    registry.register(PluginType("cache-aware-picker", PluginKind.PICKER, CacheAwarePicker,
                                 CacheAwareParams, "SGLang-style cache-aware choice"))
