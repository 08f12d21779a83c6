"""``label-curve-scorer``: proximity to the worker chosen on the other side, by labels.

llm-d scores a prefill endpoint against the already chosen decode endpoint with a
fixed curve over topology labels: same host 1.0, same rack 0.2, same zone 0.05,
same region 0.02, otherwise 0. The curve knows nothing of links, rails or load on
them: two racks in one zone look the same whatever connects them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from policies.registry import PluginKind, PluginType, Registry
from policies.snapshot import CycleContext, Worker


class LabelCurveParams(BaseModel):
    """The score of each shared level (narrowest shared level counts)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: float = Field(default=1.0, ge=0.0, le=1.0)
    rack: float = Field(default=0.2, ge=0.0, le=1.0)
    zone: float = Field(default=0.05, ge=0.0, le=1.0)
    region: float = Field(default=0.02, ge=0.0, le=1.0)


class LabelCurveScorer:
    """Scores each candidate by the narrowest locality label it shares with ``peer``."""

    def __init__(self, name: str, params: LabelCurveParams) -> None:
        """Create the scorer."""
        self.name = name
        self.curve = (("host", params.host), ("rack", params.rack),
                      ("zone", params.zone), ("region", params.region))

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        """The curve's value per candidate; without a peer every candidate scores 0."""
        peer = ctx.peer
        if peer is None:
            return {w.id: 0.0 for w in candidates}
        return {w.id: self._value(ctx, peer.id, w.id) for w in candidates}

    def _value(self, ctx: CycleContext, peer: str, worker: str) -> float:
        for level, value in self.curve:
            if ctx.snapshot.same_domain(level, peer, worker):
                return value
        return 0.0


def register(registry: Registry) -> None:
    """Register ``label-curve-scorer``."""
    registry.register(PluginType("label-curve-scorer", PluginKind.SCORER, LabelCurveScorer,
                                 LabelCurveParams, "host/rack/zone/region proximity curve"))
