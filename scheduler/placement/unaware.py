"""The topology-unaware baseline: random roles on free groups, round-robin pairing.

This is what a scheduler that knows GPU counts but not the fabric does: it takes free
TP groups in no particular order, gives the first ``P`` the prefill role and the next
``D`` the decode role, and spreads every prefill instance's output over decode
instances in list order. It exists for the benchmark's comparison, not for serving.
"""

from __future__ import annotations

import random

from scheduler.placement.problem import ROLES, Problem
from scheduler.placement.result import Role


def unaware(problem: Problem, seed: int = 0) -> dict[int, Role] | None:
    """Roles in random order (candidate -> role, insertion order = pairing order).

    The role with the larger TP size is placed first, as any packer would, so that
    smaller groups do not break up the room the larger ones need.
    """
    order = list(problem.candidates)
    random.Random(seed).shuffle(order)
    used: set[int] = set()
    roles: dict[int, Role] = {}
    counts = {"prefill": problem.prefill, "decode": problem.decode}
    for role in sorted(ROLES, key=lambda r: -problem.tp[r]):
        left = counts[role]
        for cand in order:
            if left and role in cand.roles and not used & set(cand.gpus):
                roles[cand.index] = role
                used |= set(cand.gpus)
                left -= 1
        if left:
            return None
    shuffled = list(roles)
    random.Random(seed + 1).shuffle(shuffled)
    return {c: roles[c] for c in shuffled}
