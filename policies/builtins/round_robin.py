"""``round-robin-picker``: candidates in id order, one after the other.

The router counts its decisions (``CycleContext.sequence``); the picker takes the
candidate at that count modulo their number, so it stays a pure function.
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.contracts import ScoredWorker
from policies.registry import NoParameters, PluginKind, PluginType, Registry
from policies.snapshot import CycleContext


class RoundRobinPicker:
    """Cycles through the candidates by the router's decision count."""

    def __init__(self, name: str, params: NoParameters) -> None:
        """Create the picker."""
        self.name = name

    def pick(self, ctx: CycleContext, ranked: Sequence[ScoredWorker]) -> ScoredWorker | None:
        """The candidate at ``sequence mod n`` in id order."""
        if not ranked:
            return None
        ordered = sorted(ranked, key=lambda s: s.worker.id)
        return ordered[ctx.sequence % len(ordered)]


def register(registry: Registry) -> None:
    """Register ``round-robin-picker``."""
    registry.register(PluginType("round-robin-picker", PluginKind.PICKER, RoundRobinPicker,
                                 NoParameters, "candidates in turn"))
