"""What a caller asks the placement solver for (the inputs, before any preparation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from scheduler.capacity import Workload
from scheduler.models_config import ModelShape
from scheduler.placement.result import Placement, Role
from topology.spec import FabricSpec

RuleKind = Literal["pin", "forbid"]
#: Receives one line per improving solution during a long solve.
Progress = Callable[[str], None]


@dataclass(frozen=True)
class RoleRule:
    """An operator rule on roles: ``pin`` makes every GPU of ``target`` serve ``role``;
    ``forbid`` keeps ``role`` off it. ``target`` names a GPU, host, rack, pod, zone or
    NVLink domain."""

    target: str
    role: Role
    kind: RuleKind = "pin"


@dataclass(frozen=True)
class FailureRule:
    """Optional failure-domain rule.

    ``zone_independent``: every zone holds the full sized capacity, so it can serve the
    workload alone. ``max_rack_share``: no rack holds more than this share (0..1] of the
    prefill instances, nor of the decode instances.
    """

    zone_independent: bool = False
    max_rack_share: float | None = None


@dataclass(frozen=True)
class SolverOptions:
    """Limits and knobs of the search (all deterministic for a given seed)."""

    time_limit_s: float = 10.0
    seed: int = 0
    workers: int = 2
    #: Stop improving the cost once within this share of the analytic lower bound.
    gap_tolerance: float = 0.005
    #: With a current placement, costs within this share of the best count as equal, so
    #: the placement that moves fewer instances wins.
    churn_tolerance: float = 0.005
    #: Candidates above which the instance is solved zone by zone, then pod by pod.
    decompose_above: int = 200


@dataclass(frozen=True)
class PlacementRequest:
    """Everything a placement is computed from.

    ``prefill`` / ``decode`` override the instance counts that capacity sizing derives
    from the workload. ``exclude`` names drained or failed GPUs, hosts, racks, pods or
    zones. ``current`` is the placement in force: with it, churn is minimised after cost.
    """

    fabric: FabricSpec
    workload: Workload
    tp_prefill: int
    tp_decode: int
    model: ModelShape | None = None
    gpu_type: str | None = None
    prefill: int | None = None
    decode: int | None = None
    exclude: tuple[str, ...] = ()
    rules: tuple[RoleRule, ...] = ()
    failure: FailureRule = field(default_factory=FailureRule)
    current: Placement | None = None
    options: SolverOptions = field(default_factory=SolverOptions)
