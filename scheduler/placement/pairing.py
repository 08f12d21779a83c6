"""Pairing: split each prefill instance's KV output over decode instances.

Given roles, the cheapest split on a locality tree is found bottom-up: match supply and
demand inside each NVLink domain first, then what is left inside each rack (same rail
slot first), then each pod (same rail slot first), zone and cluster. At every tree node
this matches ``min(supply, demand)`` — the most any split can keep below that node — so
it is optimal for a tree-shaped cost, and it is exactly the flow the CP-SAT model prices.

Units: a prefill instance supplies ``D`` units, a decode instance demands ``P``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

from scheduler.placement.problem import Problem
from scheduler.placement.result import Role

#: (prefill candidate, decode candidate) -> units
Flows = dict[tuple[int, int], int]
KeyFn = Callable[[Problem, int], Hashable]

_LEVEL_KEYS: tuple[KeyFn, ...] = (
    lambda p, c: p.chains[c][0],
    lambda p, c: (p.chains[c][1], p.candidates[c].slot),
    lambda p, c: p.chains[c][1],
    lambda p, c: (p.chains[c][2], p.candidates[c].slot),
    lambda p, c: p.chains[c][2],
    lambda p, c: p.chains[c][3],
    lambda p, c: 0,
)


def pair_units(problem: Problem, roles: Mapping[int, Role], topology_aware: bool = True) -> Flows:
    """Integer flows between the chosen candidates (``roles``: candidate -> role).

    ``topology_aware=False`` pairs in the given order only (round robin over the list),
    as a scheduler that ignores the fabric would.
    """
    supply = {c: problem.decode for c, role in roles.items() if role == "prefill"}
    demand = {c: problem.prefill for c, role in roles.items() if role == "decode"}
    flows: Flows = {}
    for key in _LEVEL_KEYS if topology_aware else _LEVEL_KEYS[-1:]:
        _match_level(problem, key, supply, demand, flows)
    return flows


def _match_level(problem: Problem, key: KeyFn, supply: dict[int, int], demand: dict[int, int],
                 flows: Flows) -> None:
    wanting: dict[Hashable, list[int]] = {}
    for c, left in demand.items():
        if left:
            wanting.setdefault(key(problem, c), []).append(c)
    offering: dict[Hashable, list[int]] = {}
    for c, left in supply.items():
        if left and key(problem, c) in wanting:
            offering.setdefault(key(problem, c), []).append(c)
    for group, sources in offering.items():
        _northwest(sources, wanting[group], supply, demand, flows)


def _northwest(sources: list[int], sinks: list[int], supply: dict[int, int],
               demand: dict[int, int], flows: Flows) -> None:
    """Fill sinks from sources in list order (the north-west corner rule)."""
    i = j = 0
    while i < len(sources) and j < len(sinks):
        p, d = sources[i], sinks[j]
        amount = min(supply[p], demand[d])
        if amount:
            flows[(p, d)] = flows.get((p, d), 0) + amount
            supply[p] -= amount
            demand[d] -= amount
        i += supply[p] == 0
        j += demand[d] == 0
