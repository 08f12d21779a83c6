"""The placement document: what the solver decided, in a form the router and REST read.

Everything here is a frozen pydantic model with snake_case keys. A placement lists its
instances (which GPUs, which role, where in the fabric), the pairings (the share of each
prefill instance's KV output that goes to each decode instance), the objective split into
its terms, the lower bound it is compared with, and how it was found.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["prefill", "decode"]
#: How a placement was produced.
Method = Literal["cpsat", "greedy", "unaware", "decomposed"]
#: Solver outcome in plain words (never a raw CP-SAT code).
Status = Literal["optimal", "feasible", "heuristic"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Instance(BaseModel):
    """One serving engine: ``tp`` GPUs inside one NVLink domain, with a role."""

    model_config = _FROZEN

    id: str
    role: Role
    gpus: tuple[str, ...]
    nvlink_domain: str = Field(description="the host, or the multi-host NVLink domain")
    host: str
    rack: str
    pod: str | None = None
    zone: str


class Pairing(BaseModel):
    """Share ``weight`` (0..1] of prefill instance ``prefill``'s output sent to ``decode``."""

    model_config = _FROZEN

    prefill: str
    decode: str
    weight: float = Field(gt=0, le=1)
    tier: str = Field(description="fabric tier between the two instances' first ranks")


class Objective(BaseModel):
    """The objective's terms, in priority order."""

    model_config = _FROZEN

    transfer_cost_ms: float = Field(
        description="expected KV transfer time per request (traffic-weighted mean, ms)")
    churn: int = Field(description="instances of the current placement that moved")
    imbalance: int = Field(description="largest minus smallest serving-instance count per rack")


class TrafficShares(BaseModel):
    """Where the KV traffic flows: share of bytes that stays inside each domain."""

    model_config = _FROZEN

    nvlink_domain: float
    rack: float
    pod: float
    zone: float
    cross_zone: float


class LinkLoad(BaseModel):
    """Expected KV traffic on one shared uplink against its capacity."""

    model_config = _FROZEN

    link: str
    gb_per_s: float
    capacity_gb_per_s: float

    @property
    def utilisation(self) -> float:
        """Load over capacity."""
        return self.gb_per_s / self.capacity_gb_per_s


class Placement(BaseModel):
    """A complete placement of prefill and decode instances, with its figures."""

    model_config = _FROZEN

    version: Literal[1] = 1
    fabric: str
    model: str
    tp_prefill: int
    tp_decode: int
    rate_rps: float
    kv_bytes_per_request: int
    instances: tuple[Instance, ...]
    pairings: tuple[Pairing, ...]
    objective: Objective
    lower_bound_ms: float = Field(description="no placement can have a lower transfer cost")
    lower_bound_source: str
    traffic: TrafficShares
    busiest_links: tuple[LinkLoad, ...] = ()
    method: Method
    status: Status
    solve_time_s: float
    moved: int | None = Field(default=None, description="instances moved vs --current")
    notes: tuple[str, ...] = ()

    def by_role(self, role: Role) -> list[Instance]:
        """Instances with this role, in order."""
        return [instance for instance in self.instances if instance.role == role]

    @property
    def gap(self) -> float:
        """Transfer cost over the lower bound (1.0 = provably optimal)."""
        bound = self.lower_bound_ms
        return self.objective.transfer_cost_ms / bound if bound > 0 else 1.0
