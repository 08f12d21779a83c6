"""``load-scorer``: the less loaded a worker, the higher its score.

Load is what delays the request on that side: queued prompt tokens for a prefill
worker, running requests for a decode worker. Scores are ``1 - load / max load``
among the candidates (all idle: all 1), like llm-d's queue scorer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from policies.registry import NoParameters, PluginKind, PluginType, Registry
from policies.snapshot import CycleContext, Stage, Worker


def stage_load(ctx: CycleContext, worker: Worker) -> int:
    """The load that matters on the side being chosen."""
    if ctx.stage is Stage.DECODE:
        return worker.running_requests
    return worker.queued_tokens


class LoadScorer:
    """Scores candidates by how little load they carry, relative to the busiest one."""

    def __init__(self, name: str, params: NoParameters) -> None:
        """Create the scorer."""
        self.name = name

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        """``1 - load / max load`` per candidate."""
        loads = [stage_load(ctx, w) for w in candidates]
        top = max(loads, default=0)
        if top <= 0:
            return {w.id: 1.0 for w in candidates}
        return {w.id: 1.0 - load / top for w, load in zip(candidates, loads, strict=True)}


def register(registry: Registry) -> None:
    """Register ``load-scorer``."""
    registry.register(PluginType("load-scorer", PluginKind.SCORER, LoadScorer, NoParameters,
                                 "less queued work scores higher"))
