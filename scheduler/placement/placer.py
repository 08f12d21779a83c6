"""The placement API: prepare, pre-check, search, validate, and pick the best placement.

Every candidate solution — CP-SAT's (whole or decomposed) and the greedy heuristic's —
goes through the validator, which prices it on the real fabric. The best valid one by
(transfer cost, churn, imbalance) is returned, so the result is never worse than the
greedy fallback, and a solver that runs out of time still answers.
"""

from __future__ import annotations

import time

from scheduler.placement.assemble import assemble
from scheduler.placement.bounds import analytic_bound_ms
from scheduler.placement.cpsat import CpSatOutcome, Progress, solve_cpsat
from scheduler.placement.decompose import solve_decomposed
from scheduler.placement.explain import infeasible, precheck
from scheduler.placement.greedy import greedy
from scheduler.placement.problem import Problem, prepare
from scheduler.placement.request import PlacementRequest
from scheduler.placement.result import Method, Placement, Role, Status
from topology.distance import DistanceModel
from topology.errors import UnschedulableError

Found = tuple[dict[int, Role], Method, Status]


def place(request: PlacementRequest, *, dm: DistanceModel | None = None,
          progress: Progress | None = None) -> Placement:
    """Place prefill and decode instances for ``request``.

    Raises :class:`UnschedulableError` with reasons in operator terms when no placement
    exists, :class:`InputError` / :class:`NotFoundError` for bad input.
    """
    started = time.monotonic()
    problem = prepare(request, dm)
    return solve(problem, progress=progress, started=started)


def solve(problem: Problem, *, progress: Progress | None = None,
          started: float | None = None) -> Placement:
    """Search a prepared problem and return the best validated placement."""
    started = time.monotonic() if started is None else started
    reasons = precheck(problem)
    if reasons:
        raise UnschedulableError(reasons)
    options = problem.request.options
    hint = greedy(problem)
    found: list[Found] = []
    bound = analytic_bound_ms(problem)
    source = "analytic tree bound (each node keeps at most what its free GPUs allow)"
    if len(problem.candidates) > options.decompose_above:
        roles = solve_decomposed(problem, options.time_limit_s, progress)
        if roles is not None:
            found.append((roles, "decomposed", "feasible"))
    else:
        outcome = solve_cpsat(problem, hint=hint, time_limit_s=options.time_limit_s,
                              seed=options.seed, workers=options.workers, progress=progress,
                              good_enough_ms=bound * (1 + options.gap_tolerance))
        if outcome.status == "infeasible":
            raise UnschedulableError(infeasible(problem, _uplink_overload(problem)))
        if outcome.roles is not None:
            found.append((outcome.roles, "cpsat", _status(outcome)))
        if outcome.bound_ms is not None and outcome.bound_ms > bound:
            bound, source = outcome.bound_ms, "CP-SAT best bound on the tree cost model"
    if hint is not None:
        found.append((hint, "greedy", "heuristic"))
    return _best(problem, found, bound, source, started)


def _status(outcome: CpSatOutcome) -> Status:
    return "optimal" if outcome.status == "optimal" else "feasible"


def _best(problem: Problem, found: list[Found], bound: float, source: str,
          started: float) -> Placement:
    valid: list[Placement] = []
    problems: list[str] = []
    for roles, method, status in found:
        placement, violations = assemble(
            problem, roles, method=method, status=status,
            solve_time_s=time.monotonic() - started, lower_bound_ms=bound,
            lower_bound_source=source)
        if violations:
            problems += violations
        else:
            valid.append(placement)
    if not valid:
        raise UnschedulableError(infeasible(problem, [v for v in problems if "link" in v]))
    best = min(valid, key=lambda p: (round(p.objective.transfer_cost_ms, 9),
                                     p.objective.churn, p.objective.imbalance))
    return best.model_copy(update={"solve_time_s": time.monotonic() - started})


def _uplink_overload(problem: Problem) -> list[str]:
    """Violations of the best placement without uplink limits (why uplinks make it fail)."""
    options = problem.request.options
    relaxed = solve_cpsat(problem, time_limit_s=min(2.0, options.time_limit_s),
                          seed=options.seed, workers=options.workers, relax_uplinks=True)
    if relaxed.roles is None:
        return []
    _, violations = assemble(problem, relaxed.roles, method="cpsat", status="feasible",
                             solve_time_s=0.0, lower_bound_ms=0.0, lower_bound_source="")
    return [v for v in violations if v.startswith("link ")]
