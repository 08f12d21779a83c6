"""The placement in force as the page shows it, and what its last change moved.

:class:`PlacementTracker` watches ``ServiceState.current`` (an identity check) and,
when a new placement comes into force, compares it with the one before: instances are
matched by role and GPUs, not by id (a solver may renumber), so "moved" means a GPU set
that serves now and did not before. The first placement this replica sees has nothing
to compare with; the solver's own ``moved`` count is shown with it.
"""

from __future__ import annotations

from typing import Any

from api.placement_jobs import CurrentPlacement, PlacementJob
from scheduler.placement import Instance

#: Instances listed per side of a change (the counts are always complete).
LISTED = 50


class PlacementTracker:
    """The placement last seen in force and the change that brought it."""

    def __init__(self) -> None:
        self.seen: CurrentPlacement | None = None
        self.change: dict[str, Any] | None = None
        #: Bumped on every change; the page's stream compares it.
        self.version = 0

    def observe(self, current: CurrentPlacement | None) -> bool:
        """Note the placement in force; True when it is not the one seen last."""
        if current is self.seen:
            return False
        self.change = _diff(self.seen, current)
        self.seen = current
        self.version += 1
        return True


def _key(inst: Instance) -> tuple[str, tuple[str, ...]]:
    return inst.role, tuple(sorted(inst.gpus))


def _brief(inst: Instance) -> dict[str, Any]:
    return {"id": inst.id, "role": inst.role, "gpus": list(inst.gpus), "host": inst.host}


def _diff(before: CurrentPlacement | None, after: CurrentPlacement | None) -> dict[str, Any]:
    old = {_key(i): i for i in before.placement.instances} if before else {}
    new = {_key(i): i for i in after.placement.instances} if after else {}
    placed = [new[k] for k in new if k not in old]
    removed = [old[k] for k in old if k not in new]
    return {"compared": before is not None, "kept": len(new.keys() & old.keys()),
            "placed_count": len(placed), "removed_count": len(removed),
            "placed": [_brief(i) for i in placed[:LISTED]],
            "removed": [_brief(i) for i in removed[:LISTED]]}


def placement_view(tracker: PlacementTracker, last_job: PlacementJob | None
                   ) -> dict[str, Any] | None:
    """The placement in force: origin, figures, pairings count, and its last change."""
    current = tracker.seen
    if current is None:
        return None
    p = current.placement
    return {
        "origin": current.origin, "applied_at": current.applied_at, "model": p.model,
        "method": p.method, "status": p.status, "solve_time_s": p.solve_time_s,
        "tp_prefill": p.tp_prefill, "tp_decode": p.tp_decode, "rate_rps": p.rate_rps,
        "prefill": len(p.by_role("prefill")), "decode": len(p.by_role("decode")),
        "pairings": len(p.pairings), "objective": p.objective.model_dump(),
        "lower_bound_ms": p.lower_bound_ms, "gap": p.gap, "moved": p.moved,
        "traffic": p.traffic.model_dump(),
        "busiest_links": [{"link": x.link, "gb_per_s": x.gb_per_s,
                           "capacity_gb_per_s": x.capacity_gb_per_s} for x in p.busiest_links],
        "notes": list(p.notes), "change": tracker.change,
        "job": None if last_job is None else {
            "id": last_job.id, "kind": last_job.kind, "status": last_job.status,
            "reason": last_job.reason, "finished_at": last_job.finished_at},
    }
