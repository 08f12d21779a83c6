"""Turn chosen candidates into a :class:`Placement` (instances, pairings, figures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scheduler.placement.pairing import pair_units
from scheduler.placement.problem import Problem
from scheduler.placement.result import Instance, Method, Objective, Pairing, Placement, Role, Status
from scheduler.placement.validate import Evaluation, evaluate


def instance_id(problem: Problem, candidate: int, role: Role) -> str:
    """Stable instance id: role and first GPU (so re-solves keep ids of kept instances)."""
    return f"{role}-{problem.dm.names[problem.candidates[candidate].gpus[0]]}"


def build_instances(problem: Problem, roles: Mapping[int, Role]) -> tuple[Instance, ...]:
    """Instance records of the chosen candidates, in candidate order."""
    dm, out = problem.dm, []
    for c in sorted(roles):
        cand = problem.candidates[c]
        where = dm.locality(cand.gpus[0])
        out.append(Instance(
            id=instance_id(problem, c, roles[c]), role=roles[c],
            gpus=tuple(dm.names[g] for g in cand.gpus),
            nvlink_domain=problem.domains[cand.domain].name, host=where.host,
            rack=where.rack, pod=where.pod, zone=where.zone))
    return tuple(out)


def build_pairings(problem: Problem, roles: Mapping[int, Role],
                   topology_aware: bool = True) -> tuple[Pairing, ...]:
    """Pairings (share of each prefill's output per decode) from the tree matching."""
    flows = pair_units(problem, roles, topology_aware)
    dm, out = problem.dm, []
    for (p, d), units in sorted(flows.items()):
        a, b = problem.candidates[p].gpus[0], problem.candidates[d].gpus[0]
        out.append(Pairing(prefill=instance_id(problem, p, "prefill"),
                           decode=instance_id(problem, d, "decode"),
                           weight=units / problem.decode, tier=dm.tier(a, b).label))
    return tuple(out)


def assemble(problem: Problem, roles: Mapping[int, Role], *, method: Method, status: Status,
             solve_time_s: float, lower_bound_ms: float, lower_bound_source: str,
             topology_aware: bool = True,
             notes: Sequence[str] = ()) -> tuple[Placement, tuple[str, ...]]:
    """A placement with its objective terms measured by the validator, and the
    validator's violations (empty when every constraint holds)."""
    instances = build_instances(problem, roles)
    pairings = build_pairings(problem, roles, topology_aware)
    figures: Evaluation = evaluate(problem, instances, pairings)
    placement = Placement(
        fabric=problem.dm.spec.name, model=problem.model.name,
        tp_prefill=problem.request.tp_prefill, tp_decode=problem.request.tp_decode,
        rate_rps=problem.rate_rps, kv_bytes_per_request=problem.request_bytes,
        instances=instances, pairings=pairings,
        objective=Objective(transfer_cost_ms=figures.cost_ms, churn=figures.churn,
                            imbalance=figures.imbalance),
        lower_bound_ms=lower_bound_ms, lower_bound_source=lower_bound_source,
        traffic=figures.shares, busiest_links=figures.links[:5], method=method,
        status=status, solve_time_s=solve_time_s,
        moved=figures.churn if problem.request.current is not None else None,
        notes=(*problem.notes, *notes))
    return placement, figures.violations
