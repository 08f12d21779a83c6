"""Dynamo-style routing: KV-router cost for prefill, one locality domain for the pair.

``kv-router-scorer`` follows Dynamo's KV router: a worker's cost is
``overlap_weight × blocks it must prefill + blocks it already has in use``, where the
blocks to prefill are the request's uncached blocks plus the prompt tokens already
queued there, and the blocks in use count queued prompts too (Dynamo counts a request's
blocks from the moment it routes it); the cheapest worker wins. The scorer maps cost to
``1 - cost / max cost`` (Dynamo also normalises by the largest cost).
``same-domain-filter`` (a *required* constraint) keeps only workers in the peer's
domain at ``level``; ``same-domain-scorer`` (*preferred*) gives them 1 and the others
0. One domain is all these plugins know: inside it every pair looks alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.registry import PluginKind, PluginType, Registry
from policies.snapshot import CycleContext, Worker

Level = Literal["host", "nvlink_domain", "rack", "pod", "zone", "region"]


class KvRouterParams(BaseModel):
    """``overlap_weight``: weight of prefill blocks against blocks in use."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    overlap_weight: float = Field(default=1.0, ge=0.0)


class KvRouterScorer:
    """Dynamo's KV-router cost, inverted into a [0, 1] score."""

    def __init__(self, name: str, params: KvRouterParams) -> None:
        """Create the scorer."""
        self.name = name
        self.params = params

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        """``1 - cost / max cost`` per candidate (all free: all 1)."""
        costs = [self._cost(ctx, w) for w in candidates]
        top = max(costs, default=0.0)
        if top <= 0:
            return {w.id: 1.0 for w in candidates}
        return {w.id: 1.0 - c / top for w, c in zip(candidates, costs, strict=True)}

    def _cost(self, ctx: CycleContext, worker: Worker) -> float:
        # Prefill blocks: the request's uncached blocks plus the prompt tokens already
        # queued on the worker, in blocks. Decode blocks: Dynamo counts a request's
        # blocks from the moment it is routed; the engine's blocks in use miss those of
        # prefills not started yet, which the queued tokens stand for.
        queued = worker.queued_tokens / ctx.snapshot.block_tokens
        to_prefill = max(ctx.request.blocks - ctx.cached_of(worker), 0) + queued
        in_use = max(worker.capacity_kv_blocks - worker.free_kv_blocks, 0) + queued
        return self.params.overlap_weight * to_prefill + in_use


class DomainParams(BaseModel):
    """The locality level that must (filter) or should (scorer) be shared."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    level: Level = "rack"


class SameDomainFilter:
    """Required constraint: only workers in the peer's domain (no peer: all pass)."""

    def __init__(self, name: str, params: DomainParams) -> None:
        """Create the filter."""
        self.name = name
        self.level = params.level

    def filter(self, ctx: CycleContext, candidates: Sequence[Worker]) -> list[Worker]:
        """Candidates sharing the peer's domain at ``level``."""
        peer = ctx.peer
        if peer is None:
            return list(candidates)
        return [w for w in candidates if ctx.snapshot.same_domain(self.level, peer.id, w.id)]


class SameDomainScorer:
    """Preferred constraint: 1 inside the peer's domain, 0 outside (no peer: all 0)."""

    def __init__(self, name: str, params: DomainParams) -> None:
        """Create the scorer."""
        self.name = name
        self.level = params.level

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        """1.0 or 0.0 per candidate."""
        peer = ctx.peer
        if peer is None:
            return {w.id: 0.0 for w in candidates}
        same = ctx.snapshot.same_domain
        return {w.id: 1.0 if same(self.level, peer.id, w.id) else 0.0 for w in candidates}


def register(registry: Registry) -> None:
    """Register the Dynamo-style plugins."""
    registry.register(PluginType("kv-router-scorer", PluginKind.SCORER, KvRouterScorer,
                                 KvRouterParams, "Dynamo KV-router cost as a score"))
    registry.register(PluginType("same-domain-filter", PluginKind.FILTER, SameDomainFilter,
                                 DomainParams, "required: same domain as the peer"))
    registry.register(PluginType("same-domain-scorer", PluginKind.SCORER, SameDomainScorer,
                                 DomainParams, "preferred: same domain as the peer"))
