"""The topology-unaware baseline: random roles on free groups, round-robin pairing.

This is what a scheduler that knows GPU counts but not the fabric does: it takes free
TP groups in no particular order, gives the first ``P`` the prefill role and the next
``D`` the decode role, and spreads every prefill instance's output over decode
instances in list order. It exists for the benchmark's comparison, not for serving.
"""

from __future__ import annotations

import random

from scheduler.placement.problem import Problem
from scheduler.placement.result import Role


def unaware(problem: Problem, seed: int = 0) -> dict[int, Role] | None:
    """Roles in random order (candidate -> role, insertion order = pairing order)."""
    order = list(problem.candidates)
    random.Random(seed).shuffle(order)
    used: set[int] = set()
    roles: dict[int, Role] = {}
    left: dict[Role, int] = {"prefill": problem.prefill, "decode": problem.decode}
    for cand in order:
        if used & set(cand.gpus):
            continue
        role = next((r for r in ("prefill", "decode") if left[r] and r in cand.roles), None)
        if role is None:
            continue
        roles[cand.index] = role
        used |= set(cand.gpus)
        left[role] -= 1
    return roles if not any(left.values()) else None
