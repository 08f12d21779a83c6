"""Big clusters: solve zone by zone (then pod by pod), each part on its own.

The workload is split over the parts in proportion to the TP groups their free GPUs can
form (largest remainder), or by zone quota under the zone-independence rule; each part
is a closed system carrying its share of the traffic. Parts still larger than the
threshold are split again one level down. The parts' roles are combined and the caller
validates and prices the combined placement on the whole fabric. Splitting gives up the
few transfers that an optimal placement would send across parts to even out rounding,
so the combined result is reported as ``feasible``, never ``optimal``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from scheduler.placement.bounds import analytic_bound_ms
from scheduler.placement.cpsat import solve_cpsat
from scheduler.placement.greedy import greedy
from scheduler.placement.problem import Problem
from scheduler.placement.request import Progress
from scheduler.placement.result import Role

#: Chain position of each split level (zone, then pod).
_SPLITS = (3, 2)


def solve_decomposed(problem: Problem, time_limit_s: float,
                     progress: Progress | None = None) -> dict[int, Role] | None:
    """Roles for the whole problem from independently solved parts (None if a part fails)."""
    return _Decomposer(problem, time_limit_s, progress).solve(problem, 0)


class _Decomposer:
    def __init__(self, problem: Problem, limit: float, progress: Progress | None) -> None:
        self.root = problem
        self.unsolved = len(problem.candidates)
        self.deadline = time.monotonic() + limit
        self.progress: Callable[[str], None] = progress or (lambda _: None)
        self.options = problem.request.options

    def solve(self, problem: Problem, depth: int) -> dict[int, Role] | None:
        """Split ``problem`` one level further if it is too big, else solve it."""
        too_big = len(problem.candidates) > self.options.decompose_above
        if depth < len(_SPLITS) and too_big:
            return self._split(problem, depth)
        return self._leaf(problem)

    def _split(self, problem: Problem, depth: int) -> dict[int, Role] | None:
        level = _SPLITS[depth]
        parts: dict[int, list[int]] = {}
        for c in problem.candidates:
            parts.setdefault(problem.chains[c.index][level], []).append(c.index)
        counts = _apportion(problem, parts)
        roles: dict[int, Role] = {}
        for node, members in parts.items():
            prefill, decode = counts[node]
            if prefill == 0 and decode == 0:
                continue
            if prefill == 0 or decode == 0:
                return None  # a part with one role alone cannot be a closed system
            sub = problem.restrict(members, prefill, decode)
            found = self.solve(sub, depth + 1)
            if found is None:
                return None
            roles.update({members[c]: role for c, role in found.items()})
        return roles

    def _leaf(self, problem: Problem) -> dict[int, Role] | None:
        # Each part gets the remaining time in proportion to its share of what is left.
        share = len(problem.candidates) / max(1, self.unsolved)
        self.unsolved -= len(problem.candidates)
        left = self.deadline - time.monotonic()
        hint = greedy(problem)
        target = analytic_bound_ms(problem) * (1 + self.options.gap_tolerance)
        outcome = solve_cpsat(problem, hint=hint, time_limit_s=max(0.3, left * share),
                              seed=self.options.seed, workers=self.options.workers,
                              good_enough_ms=target,
                              churn_tolerance=self.options.churn_tolerance)
        self.progress(f"part of {len(problem.candidates)} candidates: {outcome.status}")
        return outcome.roles if outcome.roles is not None else hint


def _apportion(problem: Problem, parts: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
    """Prefill and decode counts per part (zone quotas, else proportional to capacity)."""
    if problem.zone_quota is not None and _is_zone_split(problem, parts):
        zone_node = {problem.domains[problem.candidates[m[0]].domain].zone: node
                     for node, m in parts.items()}
        return {zone_node[z]: quota for z, quota in problem.zone_quota.items()
                if z in zone_node}
    groups = {node: _groups(problem, members) for node, members in parts.items()}
    prefill = _largest_remainder(problem.prefill, groups)
    decode = _largest_remainder(problem.decode, groups)
    return {node: (prefill[node], decode[node]) for node in parts}


def _is_zone_split(problem: Problem, parts: dict[int, list[int]]) -> bool:
    return all(problem.nodes[node].level == "zone" for node in parts)


def _groups(problem: Problem, members: list[int]) -> int:
    tp = min(problem.tp.values())
    domains = {problem.candidates[c].domain for c in members}
    return sum(len(problem.domains[d].free) // tp for d in domains)


def _largest_remainder(total: int, weights: dict[int, int]) -> dict[int, int]:
    whole = sum(weights.values()) or 1
    exact = {k: total * w / whole for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    spare = total - sum(out.values())
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], k))[:spare]:
        out[k] += 1
    return out
