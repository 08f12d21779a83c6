"""Placement of prefill and decode instances on a fabric (see docs/placement.md).

Public API: :func:`place` and :func:`replace_after_failure` take a
:class:`PlacementRequest` and return a :class:`Placement`; :func:`check` re-validates a
placement without the solver. Only :mod:`scheduler.placement.cpsat` imports OR-Tools,
and it is loaded on first use of the solving functions, so that reading and checking
placements (the router, the validator) never pulls the solver in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scheduler.placement.problem import Problem, prepare
from scheduler.placement.request import FailureRule, PlacementRequest, RoleRule, SolverOptions
from scheduler.placement.result import Instance, Objective, Pairing, Placement, TrafficShares
from scheduler.placement.validate import check, evaluate, moved_instances

if TYPE_CHECKING:
    from scheduler.placement.incremental import replace_after_failure
    from scheduler.placement.placer import place, solve

_LAZY = {"place": "placer", "solve": "placer", "replace_after_failure": "incremental"}

__all__ = [
    "FailureRule", "Instance", "Objective", "Pairing", "Placement", "PlacementRequest",
    "Problem", "RoleRule", "SolverOptions", "TrafficShares", "check", "evaluate",
    "moved_instances", "place", "prepare", "replace_after_failure", "solve",
]


def __getattr__(name: str) -> Any:
    """Load the solving functions (and with them OR-Tools) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"scheduler.placement.{module}"), name)
