"""Placement of prefill and decode instances on a fabric (see docs/placement.md).

Public API: :func:`place` and :func:`replace_after_failure` take a
:class:`PlacementRequest` and return a :class:`Placement`; :func:`check` re-validates a
placement without the solver. Only :mod:`scheduler.placement.cpsat` imports OR-Tools.
"""

from scheduler.placement.incremental import moved_instances, replace_after_failure
from scheduler.placement.placer import place, solve
from scheduler.placement.problem import Problem, prepare
from scheduler.placement.request import FailureRule, PlacementRequest, RoleRule, SolverOptions
from scheduler.placement.result import Instance, Objective, Pairing, Placement, TrafficShares
from scheduler.placement.validate import check, evaluate

__all__ = [
    "FailureRule", "Instance", "Objective", "Pairing", "Placement", "PlacementRequest",
    "Problem", "RoleRule", "SolverOptions", "TrafficShares", "check", "evaluate",
    "moved_instances", "place", "prepare", "replace_after_failure", "solve",
]
