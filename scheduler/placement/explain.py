"""Why a placement request cannot be met, in the operator's terms.

Checks run before the solver (cheap, necessary conditions) so that the common causes are
reported as facts about the cluster — "zone z1 has 3 free GPUs in one NVLink domain;
TP 4 needs 4", "decode capacity short by 12 %" — and never as a solver status code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scheduler.placement.problem import ROLES, Domain, Problem
from scheduler.placement.result import Role


def precheck(problem: Problem) -> list[str]:
    """Reasons the request is infeasible whatever the solver does (empty: maybe feasible)."""
    total = len(problem.dm.names)
    free = int(problem.available.sum())
    if free == 0:
        return [f"all {total} GPUs of the fabric are drained or failed"]
    if problem.zone_quota is not None:
        reasons: list[str] = []
        for zone, (prefill, decode) in problem.zone_quota.items():
            name = problem.names.zones[zone]
            domains = [d for d in problem.domains if d.zone == zone]
            reasons += [f"zone {name} cannot serve alone: {r}"
                        for r in _capacity(problem, domains, prefill, decode, f"zone {name}")]
        return reasons + _pin_reasons(problem)
    reasons = _capacity(problem, list(problem.domains), problem.prefill, problem.decode,
                        "the cluster")
    return reasons + _pin_reasons(problem) + _rack_share_reasons(problem)


def _capacity(problem: Problem, domains: Sequence[Domain], prefill: int, decode: int,
              where: str) -> list[str]:
    tp = problem.tp
    largest = max(domains, key=lambda d: len(d.free), default=None)
    biggest = len(largest.free) if largest is not None else 0
    for role in ROLES:
        if biggest < tp[role]:
            return [f"{where} has at most {biggest} free GPUs in one NVLink domain"
                    f"{_named(largest)}; {role} TP {tp[role]} needs {tp[role]}"]
    prefill_max = sum(len(d.free) // tp["prefill"] for d in domains)
    if prefill > prefill_max:
        return [_short("prefill", prefill, prefill_max, tp["prefill"], where)]
    decode_max = _decode_room(domains, prefill, tp)
    if decode > decode_max:
        return [_short("decode", decode, decode_max, tp["decode"], where)
                + f" once the {prefill} prefill instance(s) are placed"]
    return []


def _named(domain: Domain | None) -> str:
    return f" ({domain.name})" if domain is not None else ""


def _decode_room(domains: Sequence[Domain], prefill: int, tp: dict[Role, int]) -> int:
    """Decode groups left once ``prefill`` groups are packed where they waste least."""
    if tp["prefill"] == tp["decode"]:
        return sum(len(d.free) // tp["decode"] for d in domains) - prefill
    left = sum(len(d.free) for d in domains) - prefill * tp["prefill"]
    return max(0, left // tp["decode"])


def _short(role: str, needed: int, possible: int, tp: int, where: str) -> str:
    percent = math.ceil((needed - possible) / needed * 100)
    return (f"{role} capacity short by {percent} %: the workload needs {needed} TP-{tp} "
            f"{role} instance(s) and {where} has free GPUs for {max(possible, 0)}")


def _pin_reasons(problem: Problem) -> list[str]:
    reasons = []
    counts = {"prefill": problem.prefill, "decode": problem.decode}
    for role in ROLES:
        pinned = problem.pins[role]
        if not pinned:
            continue
        covering = {g for c in problem.candidates if role in c.roles for g in c.gpus}
        stray = sorted(problem.dm.names[g] for g in pinned - covering)
        if stray:
            reasons.append(f"{stray[0]} is pinned to {role} but is in no free TP-"
                           f"{problem.tp[role]} group that may serve {role}")
        needed = math.ceil(len(pinned) / problem.tp[role])
        if needed > counts[role]:
            reasons.append(f"{len(pinned)} GPUs are pinned to {role}, which takes {needed} "
                           f"instance(s); the workload needs only {counts[role]}")
    return reasons


def _rack_share_reasons(problem: Problem) -> list[str]:
    share = problem.request.failure.max_rack_share
    if share is None:
        return []
    reasons = []
    counts = {"prefill": problem.prefill, "decode": problem.decode}
    racks = {d.rack for d in problem.domains if d.free}
    for role in ROLES:
        per_rack = math.floor(share * counts[role] + 1e-9)
        if per_rack * len(racks) < counts[role]:
            reasons.append(
                f"no rack may hold more than {share:.0%} of the {role} instances "
                f"({per_rack} of {counts[role]}); {len(racks)} rack(s) with free GPUs can hold "
                f"at most {per_rack * len(racks)}")
    return reasons


def active_rules(problem: Problem) -> list[str]:
    """The optional rules in force, in words (for the last-resort explanation)."""
    request, rules = problem.request, []
    if request.failure.zone_independent:
        rules.append("every zone must serve the workload alone")
    if request.failure.max_rack_share is not None:
        rules.append(f"no rack may hold more than {request.failure.max_rack_share:.0%} "
                     "of either role")
    rules += [f"{r.target} {'must serve' if r.kind == 'pin' else 'must not serve'} {r.role}"
              for r in request.rules]
    return rules


def infeasible(problem: Problem, uplink_violations: Sequence[str]) -> list[str]:
    """Reasons once the search proved there is no placement."""
    if uplink_violations:
        return ["the KV traffic does not fit the oversubscribed uplinks: even the best "
                f"placement ignoring uplink limits overloads them ({uplink_violations[0]})"]
    rules = active_rules(problem)
    if rules:
        return ["no placement meets all of these rules at once: " + "; ".join(rules)]
    return ["no placement fits the free GPUs with the requested TP sizes and counts"]
