"""The placement API: prepare, pre-check, search, validate, and pick the best placement.

Every candidate solution — CP-SAT's (whole or decomposed) and the greedy heuristic's —
goes through the validator, which prices it on the real fabric. The best valid one by
(transfer cost, churn, imbalance) is returned, so the result is never worse than the
greedy fallback, and a solver that runs out of time still answers.

Short-circuit: greedy runs first; when its validated placement is already within
``gap_tolerance`` of the analytic lower bound (the same test that stops CP-SAT's
search) and it moves nothing (or there is no current placement to keep), the
search is skipped — no placement can be more than that tolerance cheaper, and
CP-SAT would stop on its first solution anyway. On uniform clusters this turns a
search that ran for its whole time limit into the greedy pass (``placement.md``).
"""

from __future__ import annotations

import time

from scheduler.placement.assemble import assemble
from scheduler.placement.bounds import analytic_bound_ms
from scheduler.placement.cpsat import CpSatOutcome, solve_cpsat
from scheduler.placement.decompose import solve_decomposed
from scheduler.placement.explain import infeasible, precheck
from scheduler.placement.greedy import greedy
from scheduler.placement.problem import Problem, prepare
from scheduler.placement.request import PlacementRequest, Progress
from scheduler.placement.result import Method, Placement, Role, Status
from topology.distance import DistanceModel
from topology.errors import UnschedulableError

Found = tuple[dict[int, Role], Method, Status]
_ANALYTIC = "analytic tree bound (each node keeps at most what its free GPUs allow)"


def _greedy_if_proved(problem: Problem, roles: dict[int, Role], bound: float,
                      started: float) -> Placement | None:
    """Greedy's placement when the bound proves it good enough, else None.

    Good enough: valid, within ``gap_tolerance`` of the lower bound, and moving no
    instance of a current placement (with one, a search could trade cost for churn).
    """
    tolerance = problem.request.options.gap_tolerance
    placement, violations = assemble(
        problem, roles, method="greedy", status="heuristic",
        solve_time_s=time.monotonic() - started, lower_bound_ms=bound,
        lower_bound_source=_ANALYTIC)
    cost = placement.objective.transfer_cost_ms
    if violations or cost > bound * (1 + tolerance) + 1e-12 or (
            problem.current and placement.objective.churn):
        return None
    optimal = cost <= bound * (1 + 1e-6) + 1e-12  # equal up to float rounding
    note = (f"the greedy placement is within {tolerance:.1%} of the lower bound "
            f"({cost:.4g} vs {bound:.4g} ms/request), so the CP-SAT search was skipped")
    return placement.model_copy(update={
        "status": "optimal" if optimal else "feasible",
        "solve_time_s": time.monotonic() - started,
        "notes": (*placement.notes, note)})


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
    hint = greedy(problem)
    bound = analytic_bound_ms(problem)
    if hint is not None:
        proved = _greedy_if_proved(problem, hint, bound, started)
        if proved is not None:
            if progress is not None:
                progress(f"{proved.solve_time_s:6.1f} s  greedy: "
                         f"{proved.objective.transfer_cost_ms:.3f} ms/request, within "
                         f"{problem.request.options.gap_tolerance:.1%} of the lower bound "
                         f"{bound:.3f}: search skipped")
            return proved
    search = _Search(problem, hint, progress, bound)
    found = search.run()
    if hint is not None:
        found.append((hint, "greedy", "heuristic"))
    if not found:
        limit = problem.request.options.time_limit_s
        raise UnschedulableError([f"no placement was found within the {limit:g} s time "
                                  "limit; allow more time (--time-limit) or relax the rules"])
    return _best(problem, found, search.bound, search.source, started)


class _Search:
    """CP-SAT on the whole problem, or on its parts when it is big (whole as a fallback)."""

    def __init__(self, problem: Problem, hint: dict[int, Role] | None,
                 progress: Progress | None, bound: float) -> None:
        self.problem, self.hint, self.progress = problem, hint, progress
        self.started = time.monotonic()
        self.bound = bound
        self.source = _ANALYTIC

    def run(self) -> list[Found]:
        """Solutions found (empty when the search found none in time)."""
        options = self.problem.request.options
        if len(self.problem.candidates) > options.decompose_above:
            roles = solve_decomposed(self.problem, options.time_limit_s, self.progress)
            if roles is not None:
                return [(roles, "decomposed", "feasible")]
        left = options.time_limit_s - (time.monotonic() - self.started)
        return self._whole(max(1.0, left))

    def _whole(self, limit: float) -> list[Found]:
        """One CP-SAT solve of the whole problem; raises when it proves infeasibility."""
        problem, options = self.problem, self.problem.request.options
        outcome = solve_cpsat(problem, hint=self.hint, time_limit_s=limit, seed=options.seed,
                              workers=options.workers, progress=self.progress,
                              good_enough_ms=self.bound * (1 + options.gap_tolerance),
                              churn_tolerance=options.churn_tolerance)
        if outcome.status == "infeasible":
            raise UnschedulableError(infeasible(problem, _uplink_overload(problem)))
        if outcome.bound_ms is not None and outcome.bound_ms > self.bound:
            self.bound, self.source = outcome.bound_ms, "CP-SAT best bound on the tree cost model"
        return [(outcome.roles, "cpsat", _status(outcome))] if outcome.roles is not None else []


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
    best = _pick(problem, valid)
    return best.model_copy(update={"solve_time_s": time.monotonic() - started})


def _pick(problem: Problem, valid: list[Placement]) -> Placement:
    """Lowest cost, then churn, then imbalance; with a current placement, costs within
    ``churn_tolerance`` of the lowest count as equal (fewer moves first)."""
    if not problem.current:
        return min(valid, key=lambda p: (round(p.objective.transfer_cost_ms, 9),
                                         p.objective.churn, p.objective.imbalance))
    lowest = min(p.objective.transfer_cost_ms for p in valid)
    limit = lowest * (1 + problem.request.options.churn_tolerance) + 1e-12
    close = [p for p in valid if p.objective.transfer_cost_ms <= limit]
    return min(close, key=lambda p: (p.objective.churn, round(p.objective.transfer_cost_ms, 9),
                                     p.objective.imbalance))


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
