"""Re-check a placement and measure it, without the solver.

This module never imports OR-Tools or the heuristics: it reads the placement as the
router would (instance GPUs by name, roles, pairing weights) and checks every rule
against the prepared :class:`Problem` — GPUs known, free and unshared; each group inside
one NVLink domain and of its role's TP size; capacity; pins and forbids; failure-domain
rules; pairing weights that route all traffic and feed every decode instance evenly;
traffic on every shared uplink within its capacity. It also measures the objective with
the real DistanceModel pairs (not the solver's tree model).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.placement.problem import Problem, resolve_target
from scheduler.placement.result import Instance, LinkLoad, Pairing, Placement, TrafficShares
from topology.errors import NotFoundError

_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Evaluation:
    """Measured figures of a placement and every rule it breaks."""

    cost_ms: float
    shares: TrafficShares
    links: tuple[LinkLoad, ...]
    churn: int
    imbalance: int
    violations: tuple[str, ...]


def check(problem: Problem, placement: Placement) -> tuple[str, ...]:
    """Every rule the placement breaks, in words (empty when it is valid)."""
    return evaluate(problem, placement.instances, placement.pairings).violations


def evaluate(problem: Problem, instances: Sequence[Instance],
             pairings: Sequence[Pairing]) -> Evaluation:
    """Measure and check instances and pairings against the problem."""
    violations: list[str] = []
    gpus = _instance_gpus(problem, instances, violations)
    if not violations:
        _check_groups(problem, instances, gpus, violations)
        _check_counts(problem, instances, violations)
        _check_rules(problem, instances, gpus, violations)
    by_id = {i.id: i for i in instances}
    _check_pairings(problem, instances, pairings, violations)
    if violations:
        empty = TrafficShares(nvlink_domain=0, rack=0, pod=0, zone=0, cross_zone=0)
        return Evaluation(math.inf, empty, (), 0, 0, tuple(violations))
    cost, shares, loads = _traffic(problem, pairings, by_id, gpus)
    links = _link_loads(problem, loads, violations)
    return Evaluation(cost, shares, links, _churn(problem, instances, gpus),
                      _imbalance(problem, instances), tuple(violations))


def _instance_gpus(problem: Problem, instances: Sequence[Instance],
                   violations: list[str]) -> dict[str, tuple[int, ...]]:
    found: dict[str, tuple[int, ...]] = {}
    for instance in instances:
        try:
            found[instance.id] = tuple(problem.dm.index(name) for name in instance.gpus)
        except NotFoundError as exc:
            violations.append(f"instance {instance.id}: {exc}")
    if len({i.id for i in instances}) != len(instances):
        violations.append("instance ids are not unique")
    return found


def _check_groups(problem: Problem, instances: Sequence[Instance],
                  gpus: dict[str, tuple[int, ...]], violations: list[str]) -> None:
    domain_of = {g: d for d, dom in enumerate(problem.domains) for g in dom.gpus}
    used: Counter[int] = Counter()
    for instance in instances:
        group = gpus[instance.id]
        used.update(group)
        if len(group) != problem.tp[instance.role]:
            violations.append(f"instance {instance.id} has {len(group)} GPUs; "
                              f"{instance.role} TP is {problem.tp[instance.role]}")
        if len({domain_of[g] for g in group}) != 1:
            violations.append(f"instance {instance.id} spans NVLink domains")
        down = [problem.dm.names[g] for g in group if not problem.available[g]]
        if down:
            violations.append(f"instance {instance.id} uses drained/failed GPU(s) "
                              f"{', '.join(down)}")
    shared = sorted(problem.dm.names[g] for g, n in used.items() if n > 1)
    if shared:
        violations.append(f"GPU(s) in more than one instance: {', '.join(shared[:5])}")


def _check_counts(problem: Problem, instances: Sequence[Instance],
                  violations: list[str]) -> None:
    count: Counter[str] = Counter(i.role for i in instances)
    for role, needed in (("prefill", problem.prefill), ("decode", problem.decode)):
        if count[role] != needed:
            violations.append(f"{count[role]} {role} instance(s) placed; {needed} needed")
    if problem.zone_quota is not None:
        zones = problem.names.zones
        per_zone: Counter[tuple[str, str]] = Counter((i.zone, i.role) for i in instances)
        for z, (p, d) in problem.zone_quota.items():
            for role, needed in (("prefill", p), ("decode", d)):
                if per_zone[(zones[z], role)] < needed:
                    violations.append(f"zone {zones[z]} cannot serve alone: "
                                      f"{per_zone[(zones[z], role)]} {role} of {needed}")
    share = problem.request.failure.max_rack_share
    if share is not None:
        per_rack: Counter[tuple[str, str]] = Counter((i.rack, i.role) for i in instances)
        for (rack, role), n in sorted(per_rack.items()):
            limit = math.floor(share * (count[role]) + 1e-9)
            if n > limit:
                violations.append(f"rack {rack} holds {n} {role} instances; the rule allows "
                                  f"{limit} ({share:.0%})")


def _check_rules(problem: Problem, instances: Sequence[Instance],
                 gpus: dict[str, tuple[int, ...]], violations: list[str]) -> None:
    role_of = {g: i.role for i in instances for g in gpus[i.id]}
    for rule in problem.request.rules:
        targets = [int(g) for g in resolve_target(problem.dm, rule.target)
                   if problem.available[g]]
        if rule.kind == "pin":
            wrong = [g for g in targets if role_of.get(g) != rule.role]
        else:
            wrong = [g for g in targets if role_of.get(g) == rule.role]
        if wrong:
            verb = "must serve" if rule.kind == "pin" else "must not serve"
            violations.append(f"{rule.target} {verb} {rule.role}, but "
                              f"{problem.dm.names[wrong[0]]} does not follow the rule")


def _check_pairings(problem: Problem, instances: Sequence[Instance],
                    pairings: Sequence[Pairing], violations: list[str]) -> None:
    roles = {i.id: i.role for i in instances}
    out: dict[str, float] = {}
    into: dict[str, float] = {}
    for pair in pairings:
        if roles.get(pair.prefill) != "prefill" or roles.get(pair.decode) != "decode":
            violations.append(f"pairing {pair.prefill} -> {pair.decode} does not join a "
                              "prefill instance to a decode instance")
            continue
        out[pair.prefill] = out.get(pair.prefill, 0.0) + pair.weight
        into[pair.decode] = into.get(pair.decode, 0.0) + pair.weight
    ratio = problem.prefill / problem.decode
    for instance in instances:
        total, wanted = ((out.get(instance.id, 0.0), 1.0) if instance.role == "prefill"
                         else (into.get(instance.id, 0.0), ratio))
        if abs(total - wanted) > _TOLERANCE * max(1.0, wanted):
            violations.append(f"{instance.role} instance {instance.id} carries {total:.4f} "
                              f"of its traffic share; expected {wanted:.4f}")


def _traffic(problem: Problem, pairings: Sequence[Pairing], by_id: dict[str, Instance],
             gpus: dict[str, tuple[int, ...]]) -> tuple[float, TrafficShares,
                                                        dict[str, float]]:
    """Mean transfer ms per request, traffic shares by domain, and GB/s per link."""
    dm, size = problem.dm, problem.bytes_per_rank
    per_prefill_gbs = problem.rate_rps / problem.prefill * problem.request_bytes / 1e9
    cost = 0.0
    loads: dict[str, float] = {}
    shares: dict[str, float] = {}
    for pair in pairings:
        src, dst = gpus[pair.prefill], gpus[pair.decode]
        share = pair.weight / problem.prefill
        ranks = [(a, dst[r % len(dst)]) for r, a in enumerate(src)]
        cost += share * max(dm.pair(a, b).transfer_time_s(size) for a, b in ranks) * 1e3
        for a, b in ranks:
            for link in dm.path_links(a, b):
                loads[link] = loads.get(link, 0.0) + pair.weight * per_prefill_gbs / len(src)
        first, second = by_id[pair.prefill], by_id[pair.decode]
        for level in ("nvlink_domain", "rack", "pod", "zone"):
            same = getattr(first, level) == getattr(second, level)
            shares[level] = shares.get(level, 0.0) + share * same
    return cost, TrafficShares(
        nvlink_domain=shares.get("nvlink_domain", 0.0), rack=shares.get("rack", 0.0),
        pod=shares.get("pod", 0.0), zone=shares.get("zone", 0.0),
        cross_zone=max(0.0, 1 - shares.get("zone", 0.0))), loads


def _link_loads(problem: Problem, loads: dict[str, float],
                violations: list[str]) -> tuple[LinkLoad, ...]:
    out = []
    for link, gbs in loads.items():
        capacity = problem.dm.link_capacity_gb_per_s(link)
        out.append(LinkLoad(link=link, gb_per_s=gbs, capacity_gb_per_s=capacity))
        if gbs > capacity * (1 + _TOLERANCE):
            violations.append(f"link {link} would carry {gbs:,.1f} GB/s of KV traffic; its "
                              f"capacity is {capacity:,.1f} GB/s")
    out.sort(key=lambda load: (-load.utilisation, load.link))
    return tuple(out)


def _churn(problem: Problem, instances: Sequence[Instance],
           gpus: dict[str, tuple[int, ...]]) -> int:
    """Instances of the current placement that are not kept with the same GPUs and role."""
    kept = {(tuple(sorted(gpus[i.id])), i.role) for i in instances}
    return sum((tuple(sorted(c.gpus)), c.role) not in kept for c in problem.current)


def _imbalance(problem: Problem, instances: Sequence[Instance]) -> int:
    """Largest minus smallest instance count over racks that have free GPUs."""
    racks = {problem.names.racks[d.rack] for d in problem.domains if d.free}
    per_rack = Counter(i.rack for i in instances)
    counts = [per_rack[r] for r in racks]
    return max(counts) - min(counts) if counts else 0


def moved_instances(before: Placement, after: Placement) -> list[str]:
    """Ids of ``before``'s instances that ``after`` does not keep on the same GPUs and role."""
    kept = {(tuple(sorted(i.gpus)), i.role) for i in after.instances}
    return [i.id for i in before.instances if (tuple(sorted(i.gpus)), i.role) not in kept]
