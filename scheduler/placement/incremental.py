"""Re-placement after failures: keep every instance that can stay, say how many moved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from scheduler.placement.placer import place
from scheduler.placement.request import PlacementRequest, Progress
from scheduler.placement.result import Placement
from scheduler.placement.validate import moved_instances
from topology.distance import DistanceModel
from topology.errors import InputError

__all__ = ["moved_instances", "replace_after_failure"]


def replace_after_failure(request: PlacementRequest, failed: Sequence[str], *,
                          dm: DistanceModel | None = None,
                          progress: Progress | None = None) -> Placement:
    """Re-solve with ``failed`` GPUs/hosts/racks excluded, minimising moves after cost.

    ``request.current`` must hold the placement in force; the result's ``moved`` counts
    its instances that do not survive unchanged (same GPUs, same role).
    """
    if request.current is None:
        raise InputError("re-placing after a failure needs the current placement")
    return place(replace(request, exclude=(*request.exclude, *failed)), dm=dm,
                 progress=progress)
