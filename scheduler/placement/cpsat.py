"""The CP-SAT model (the only module that imports OR-Tools).

Variables: one boolean per (candidate, allowed role); per locality-tree node an integer
``kept_v``: KV traffic units that stay below the node. Constraints, each added by its own
function: a GPU serves at most one instance; exact prefill and decode counts; pins;
failure-domain rules; ``kept_v ≤ supply_v`` and ``kept_v ≤ demand_v``; traffic leaving
or entering a node (``supply_v − kept_v``, ``demand_v − kept_v``) within its uplink.

The search runs in two phases. Phase 1 maximises ``Σ δ_v · kept_v`` — the saving on the
tree against sending everything over the top (see :mod:`.bounds`), i.e. it minimises the
expected transfer cost. Phase 2 keeps that saving and minimises churn against the current
placement, then imbalance between racks. Both use the time limit, the seed, a worker
count and the greedy solution as a hint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from scheduler.placement.bounds import deltas, root_cost
from scheduler.placement.problem import Problem
from scheduler.placement.request import Progress
from scheduler.placement.result import Role

#: Objective coefficients are ns per unit: rounding stays far below any reported digit.
_SCALE = 1e6
_STATUS: dict[Any, str] = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible",
           cp_model.INFEASIBLE: "infeasible", cp_model.UNKNOWN: "unknown",
           cp_model.MODEL_INVALID: "invalid"}

Vars = dict[tuple[int, Role], Any]
_PREFILL: Role = "prefill"
_DECODE: Role = "decode"


@dataclass(frozen=True)
class CpSatOutcome:
    """What the search found: roles (None without a solution), status, proven bound."""

    roles: dict[int, Role] | None
    status: str
    bound_ms: float | None
    wall_s: float


def solve_cpsat(problem: Problem, *, hint: dict[int, Role] | None = None,
                time_limit_s: float = 10.0, seed: int = 0, workers: int = 2,
                relax_uplinks: bool = False, progress: Progress | None = None,
                good_enough_ms: float | None = None,
                churn_tolerance: float = 0.0) -> CpSatOutcome:
    """Solve ``problem`` in two phases (cost, then churn and imbalance).

    Phase 1 stops early once the tree cost is at or below ``good_enough_ms`` (the caller
    passes the analytic lower bound plus a tolerance); phase 2 gets at most 30 % of the
    time limit and, when there is a current placement, may give up ``churn_tolerance``
    (a share) of the phase-1 cost to move fewer instances.
    """
    started = time.monotonic()
    model = cp_model.CpModel()
    x = _role_vars(model, problem)
    _one_instance_per_gpu(model, problem, x)
    _counts(model, problem, x)
    _pins(model, problem, x)
    _failure_rules(model, problem, x)
    saving, kept = _tree(model, problem, x, relax_uplinks)
    _hint(model, problem, x, kept, hint)
    model.maximize(saving)
    reporter = _Reporter(problem, progress, good_enough_ms)
    first = _run(model, time_limit_s * 0.7, seed, workers, reporter)
    status = _STATUS.get(first.status, "unknown")
    if first.status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpSatOutcome(None, status, None, time.monotonic() - started)
    roles = _roles(first.solver, x)
    bound = _bound_ms(problem, first.solver.best_objective_bound)
    left = min(time_limit_s - (time.monotonic() - started), 0.3 * time_limit_s)
    floor = _saving_floor(problem, first.solver.objective_value, churn_tolerance)
    second = _second_phase(model, problem, (x, kept), saving, floor, roles, max(0.1, left),
                           seed, workers)
    if second is not None:
        roles = second
    return CpSatOutcome(roles, status, bound, time.monotonic() - started)


# --- variables and constraints ---------------------------------------------------------


def _role_vars(model: cp_model.CpModel, problem: Problem) -> Vars:
    return {(c.index, role): model.new_bool_var(f"{role[0]}{c.index}")
            for c in problem.candidates for role in sorted(c.roles)}


def _one_instance_per_gpu(model: cp_model.CpModel, problem: Problem, x: Vars) -> None:
    by_gpu: dict[int, list[Any]] = {}
    for (c, _), var in x.items():
        for g in problem.candidates[c].gpus:
            by_gpu.setdefault(g, []).append(var)
    for owners in by_gpu.values():
        if len(owners) > 1:
            model.add_at_most_one(owners)


def _counts(model: cp_model.CpModel, problem: Problem, x: Vars) -> None:
    for role, count in (("prefill", problem.prefill), ("decode", problem.decode)):
        model.add(sum(v for (_, r), v in x.items() if r == role) == count)
    if problem.zone_quota is None:
        return
    for zone, quota in problem.zone_quota.items():
        for role, count in ((_PREFILL, quota[0]), (_DECODE, quota[1])):
            model.add(sum(v for (c, r), v in x.items() if r == role and
                          problem.domains[problem.candidates[c].domain].zone == zone) == count)


def _pins(model: cp_model.CpModel, problem: Problem, x: Vars) -> None:
    for role, gpus in problem.pins.items():
        for g in gpus:
            model.add(sum(v for (c, r), v in x.items()
                          if r == role and g in problem.candidates[c].gpus) == 1)


def _failure_rules(model: cp_model.CpModel, problem: Problem, x: Vars) -> None:
    share = problem.request.failure.max_rack_share
    if share is None:
        return
    per_rack: dict[tuple[int, Role], list[Any]] = {}
    for (c, role), var in x.items():
        rack = problem.domains[problem.candidates[c].domain].rack
        per_rack.setdefault((rack, role), []).append(var)
    totals: dict[Role, int] = {"prefill": problem.prefill, "decode": problem.decode}
    for (_, role), owners in per_rack.items():
        model.add(sum(owners) <= math.floor(share * totals[role] + 1e-9))


Kept = dict[int, tuple[Any, list[int]]]


def _tree(model: cp_model.CpModel, problem: Problem, x: Vars,
          relax_uplinks: bool) -> tuple[Any, Kept]:
    """Kept-traffic variables per node and uplink limits; returns the saving expression
    and, per node, its kept variable with the candidates below it."""
    delta = deltas(problem)
    below: dict[int, list[int]] = {}
    for c in problem.candidates:
        for node in problem.chains[c.index][:-1]:
            below.setdefault(node, []).append(c.index)
    terms = []
    kept_vars: Kept = {}
    for node, cands in below.items():
        capacity = None if relax_uplinks else _capacity_units(problem, node)
        weight = round(delta[node] * _SCALE)
        if weight <= 0 and capacity is None:
            continue
        supply = sum(problem.decode * x[(c, "prefill")] for c in cands if (c, "prefill") in x)
        demand = sum(problem.prefill * x[(c, "decode")] for c in cands if (c, "decode") in x)
        kept = model.new_int_var(0, problem.prefill * problem.decode, f"kept{node}")
        model.add(kept <= supply)
        model.add(kept <= demand)
        if capacity is not None:
            model.add(supply - kept <= capacity)
            model.add(demand - kept <= capacity)
        terms.append(weight * kept)
        kept_vars[node] = (kept, cands)
    return sum(terms), kept_vars


def _capacity_units(problem: Problem, node: int) -> int | None:
    """The node's uplink in traffic units, or None when it cannot bind."""
    capacity = problem.nodes[node].capacity_gb_per_s
    if capacity is None or math.isinf(capacity):
        return None
    units = math.floor(capacity / problem.unit_gb_per_s)
    return units if units < problem.prefill * problem.decode else None


def _hint(model: cp_model.CpModel, problem: Problem, x: Vars, kept: Kept,
          hint: dict[int, Role] | None) -> None:
    """A complete hint: roles, and the traffic each node keeps under them."""
    if hint is None:
        return
    for (c, role), var in x.items():
        model.add_hint(var, hint.get(c) == role)
    for var, cands in kept.values():
        supply = problem.decode * sum(hint.get(c) == "prefill" for c in cands)
        demand = problem.prefill * sum(hint.get(c) == "decode" for c in cands)
        model.add_hint(var, min(supply, demand))


# --- phases -------------------------------------------------------------------------------


@dataclass
class _Run:
    solver: cp_model.CpSolver
    status: Any


class _Reporter(cp_model.CpSolverSolutionCallback):
    """Reports each improving phase-1 solution and stops once it is good enough."""

    def __init__(self, problem: Problem, progress: Progress | None,
                 good_enough_ms: float | None) -> None:
        super().__init__()
        self.problem, self.progress, self.good_enough = problem, progress, good_enough_ms

    def on_solution_callback(self) -> None:
        """Called by CP-SAT on each improving solution."""
        cost = _cost_ms(self.problem, self.objective_value)
        if self.progress is not None:
            self.progress(f"{self.wall_time:6.1f} s  solution: {cost:.3f} ms/request")
        if self.good_enough is not None and cost <= self.good_enough:
            self.stop_search()


def _run(model: cp_model.CpModel, limit: float, seed: int, workers: int,
         callback: cp_model.CpSolverSolutionCallback | None) -> _Run:
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.1, limit)
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = workers
    status = solver.solve(model, callback) if callback is not None else solver.solve(model)
    return _Run(solver, status)


def _saving_floor(problem: Problem, best: float, tolerance: float) -> int:
    """The least saving phase 2 must keep: phase 1's, less the churn tolerance."""
    if not problem.current or tolerance <= 0:
        return round(best)
    slack = tolerance * _cost_ms(problem, best) * _SCALE * problem.prefill * problem.decode
    return math.ceil(best - slack)


def _second_phase(model: cp_model.CpModel, problem: Problem, variables: tuple[Vars, Kept],
                  saving: Any, floor: int, roles: dict[int, Role], limit: float, seed: int,
                  workers: int) -> dict[int, Role] | None:
    """Keep at least ``floor`` of saving; minimise churn, then rack imbalance."""
    x, kept = variables
    second = model  # phase 1 is over: its model is extended in place
    second.clear_hints()  # type: ignore[no-untyped-call]
    second.add(saving >= floor)
    _hint(second, problem, x, kept, roles)
    churn = _churn(problem, x)
    imbalance = _imbalance(second, problem, x)
    second.minimize(churn * (len(problem.candidates) + 1) + imbalance)
    run = _run(second, limit, seed, workers, None)
    if run.status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return _roles(run.solver, x)


def _churn(problem: Problem, x: Vars) -> Any:
    """Current instances not kept on the same GPUs with the same role."""
    moved: list[Any] = []
    for current in problem.current:
        var = x.get((current.candidate, current.role)) if current.candidate is not None \
            else None
        moved.append(1 - var if var is not None else 1)
    return sum(moved)


def _imbalance(model: cp_model.CpModel, problem: Problem, x: Vars) -> Any:
    per_rack: dict[int, list[Any]] = {}
    for (c, _), var in x.items():
        per_rack.setdefault(problem.domains[problem.candidates[c].domain].rack, []).append(var)
    if len(per_rack) < 2:
        return 0
    top = len(problem.candidates)
    high, low = model.new_int_var(0, top, "high"), model.new_int_var(0, top, "low")
    for owners in per_rack.values():
        model.add(high >= sum(owners))
        model.add(low <= sum(owners))
    return high - low


# --- reading results ----------------------------------------------------------------------


def _roles(solver: cp_model.CpSolver, x: Vars) -> dict[int, Role]:
    return {c: role for (c, role), var in x.items() if solver.boolean_value(var)}


def _cost_ms(problem: Problem, saving: float) -> float:
    return root_cost(problem) - saving / _SCALE / (problem.prefill * problem.decode)


def _bound_ms(problem: Problem, bound: float) -> float:
    # Weights were rounded to whole ns: at most half a ns per unit on each of the four
    # levels below the root could be missing from the bound on the saving.
    return _cost_ms(problem, bound) - 2.0 / _SCALE
