"""``free-kv-scorer``: prefer workers with more of their KV cache free.

An example toposched policy plugin. Install it next to toposched (``pip install
docs/example-plugin``), allow it (``toposched.policies`` entry point ``free-kv``)
and use ``type: free-kv-scorer`` in a policy document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from policies.registry import PluginKind, PluginSink, PluginType
from policies.snapshot import CycleContext, Worker


class FreeKvParams(BaseModel):
    """``floor``: free fraction below which a worker scores 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    floor: float = Field(default=0.0, ge=0.0, lt=1.0)


class FreeKvScorer:
    """Scores a worker by the free fraction of its KV cache, rescaled above ``floor``."""

    def __init__(self, name: str, params: FreeKvParams) -> None:
        """Create the scorer (the registry passes the instance name and parameters)."""
        self.name = name
        self.floor = params.floor

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        """A score in [0, 1] per candidate; pure: reads only the candidates."""
        return {w.id: self._value(w) for w in candidates}

    def _value(self, worker: Worker) -> float:
        if worker.capacity_kv_blocks <= 0:
            return 0.0
        free = worker.free_kv_blocks / worker.capacity_kv_blocks
        return max(0.0, (free - self.floor) / (1.0 - self.floor))


def register(registry: PluginSink) -> None:
    """Entry point: add this package's plugin types to toposched's registry."""
    registry.register(PluginType("free-kv-scorer", PluginKind.SCORER, FreeKvScorer,
                                 FreeKvParams, "more free KV cache scores higher"))
