"""``random-picker``: a uniformly random candidate, repeatable under the cycle's seed.

The floor every policy must beat; vLLM production-stack and SGLang offer it too.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.contracts import ScoredWorker
from policies.registry import NoParameters, PluginKind, PluginType, Registry
from policies.snapshot import CycleContext


class RandomPicker:
    """Picks any ranked candidate with equal probability (scores are ignored)."""

    def __init__(self, name: str, params: NoParameters) -> None:
        """Create the picker."""
        self.name = name

    def pick(self, ctx: CycleContext, ranked: Sequence[ScoredWorker]) -> ScoredWorker | None:
        """A seeded random choice; candidates are ordered by id first so ranking ties
        cannot change the draw."""
        if not ranked:
            return None
        ordered = sorted(ranked, key=lambda s: s.worker.id)
        return ordered[ctx.rng().randrange(len(ordered))]


def register(registry: Registry) -> None:
    """Register ``random-picker``."""
    registry.register(PluginType("random-picker", PluginKind.PICKER, RandomPicker,
                                 NoParameters, "uniformly random candidate (seeded)"))
