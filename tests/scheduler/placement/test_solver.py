"""The solver on fixed instances: feasibility, bounds, a brute-forced optimum, baselines."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest

from scheduler.kv import kv_bytes_per_token_per_gpu
from scheduler.models_config import load_models
from scheduler.placement import Placement, SolverOptions, check, place, placer, prepare
from scheduler.placement.assemble import assemble
from scheduler.placement.bounds import analytic_bound_ms
from scheduler.placement.greedy import greedy
from scheduler.placement.problem import Problem
from scheduler.placement.result import Role
from scheduler.placement.unaware import unaware
from tests.scheduler.placement.builders import request, tiny_fabric, workload
from topology.distance import DistanceModel
from topology.spec import FabricSpec
from topology.synth import SynthParams, synth_cluster


def _assert_sound(problem: Problem, placement: Placement) -> None:
    assert check(problem, placement) == ()
    assert len(placement.by_role("prefill")) == problem.prefill
    assert len(placement.by_role("decode")) == problem.decode
    assert placement.objective.transfer_cost_ms >= placement.lower_bound_ms * (1 - 1e-9)
    t = placement.traffic
    assert 0 <= t.nvlink_domain <= t.rack <= t.pod <= t.zone <= 1 + 1e-9


def test_small_fabric_placement_is_valid_and_near_its_bound() -> None:
    req = request()
    problem = prepare(req)
    placement = place(req)
    _assert_sound(problem, placement)
    assert placement.gap <= 1.02
    # 10 prefill and 14 decode TP-4 instances on 8-GPU hosts: at most 10 hosts can mix
    # roles, so at most 10·10 of the 10·14 traffic units stay inside a host.
    assert placement.traffic.nvlink_domain <= 10 / 14 + 1e-9
    assert placement.traffic.nvlink_domain >= 0.7
    assert placement.traffic.cross_zone <= 0.01
    assert placement.method in ("cpsat", "greedy")


def test_each_instance_sits_in_one_host_with_its_tp_size() -> None:
    placement = place(request(tp_prefill=2, tp_decode=4, prefill=12, decode=10))
    for instance in placement.instances:
        hosts = {gpu.split("/")[0] for gpu in instance.gpus}
        assert hosts == {instance.host}
        assert len(instance.gpus) == (2 if instance.role == "prefill" else 4)


def test_pairing_weights_route_every_prefill_completely() -> None:
    placement = place(request())
    out: dict[str, float] = {}
    for pair in placement.pairings:
        out[pair.prefill] = out.get(pair.prefill, 0.0) + pair.weight
    assert set(out) == {i.id for i in placement.by_role("prefill")}
    assert all(math.isclose(total, 1.0) for total in out.values())


# --- brute force ------------------------------------------------------------------------


def _flows(supply: list[int], demand: list[int]) -> Iterator[list[list[int]]]:
    """Every integer transport matrix with these row and column sums."""
    if len(supply) == 1:
        yield [list(demand)]
        return
    for row in itertools.product(*(range(min(supply[0], d) + 1) for d in demand)):
        if sum(row) == supply[0]:
            rest = [d - r for d, r in zip(demand, row, strict=True)]
            for tail in _flows(supply[1:], rest):
                yield [list(row), *tail]


def _brute_force(fabric: FabricSpec, prefill: int, decode: int, tp: int = 2) -> float:
    """Optimal mean KV transfer ms/request over every role assignment and every pairing
    of the host-aligned TP groups (integer flows suffice: transport problems are
    totally unimodular)."""
    dm = DistanceModel(fabric)
    nbytes = kv_bytes_per_token_per_gpu(load_models().get("llama-3-70b"), tp) * 4000
    per_host = len(fabric.hosts[0].gpus)
    groups = [tuple(range(h * per_host + k, h * per_host + k + tp))
              for h in range(len(fabric.hosts)) for k in range(0, per_host, tp)]

    def cost(a: tuple[int, ...], b: tuple[int, ...]) -> float:
        return max(dm.transfer_time(x, y, nbytes) for x, y in zip(a, b, strict=True)) * 1e3

    best = math.inf
    for roles in itertools.product("pd-", repeat=len(groups)):
        ps = [g for g, r in zip(groups, roles, strict=True) if r == "p"]
        ds = [g for g, r in zip(groups, roles, strict=True) if r == "d"]
        if len(ps) != prefill or len(ds) != decode:
            continue
        for flow in _flows([decode] * prefill, [prefill] * decode):
            total = sum(flow[i][j] * cost(p, d) for i, p in enumerate(ps)
                        for j, d in enumerate(ds))
            best = min(best, total / (prefill * decode))
    return best


@pytest.mark.parametrize(("prefill", "decode", "zones", "pods"), [(1, 2, 1, 2), (2, 3, 2, 2)])
def test_solver_matches_brute_force_optimum(prefill: int, decode: int, zones: int,
                                            pods: int) -> None:
    # 4-GPU hosts, each in its own pod: cross-host costs are set by pod and zone.
    fabric = synth_cluster(SynthParams(zones=zones, pods_per_zone=pods, racks_per_pod=1,
                                       hosts_per_rack=1, template="gb200-nvl"))
    req = request(fabric=fabric, tp_prefill=2, tp_decode=2, prefill=prefill, decode=decode,
                  options=SolverOptions(time_limit_s=2.0, gap_tolerance=0.0))
    placement = place(req)
    optimum = _brute_force(fabric, prefill, decode)
    assert placement.objective.transfer_cost_ms == pytest.approx(optimum, rel=1e-9)
    assert placement.lower_bound_ms <= optimum * (1 + 1e-9)
    _assert_sound(prepare(req), placement)


def test_brute_force_sees_nvlink_is_cheaper_than_the_network() -> None:
    # Guards the brute force itself. A TP-2 rank of Llama-3-70B holds 163,840 B/token,
    # 655 MB for 4,000 tokens: 1.46 ms over NVLink (450 GB/s), 13.11 ms over one
    # 400 Gb/s NIC. One prefill and one decode share a host; with three decode instances
    # on two 2-group hosts, two thirds of the KV must cross the network.
    fabric = tiny_fabric(hosts=2)
    assert _brute_force(fabric, 1, 1) == pytest.approx(1.4584, rel=1e-3)
    assert _brute_force(fabric, 1, 3) == pytest.approx((1.4584 + 2 * 13.1142) / 3, rel=1e-3)


# --- baselines ----------------------------------------------------------------------------


def _cost(problem: Problem, roles: dict[int, Role] | None, aware: bool = True) -> float:
    assert roles is not None
    placement, violations = assemble(problem, roles, method="greedy", status="heuristic",
                                     solve_time_s=0.0, lower_bound_ms=0.0,
                                     lower_bound_source="", topology_aware=aware)
    assert violations == ()
    return placement.objective.transfer_cost_ms


def test_solver_at_or_below_greedy_and_far_below_unaware() -> None:
    fabric = synth_cluster(SynthParams(zones=2, pods_per_zone=2, racks_per_pod=2,
                                       hosts_per_rack=4))
    req = request(fabric=fabric, tp_prefill=2, tp_decode=2, prefill=45, decode=70,
                  workload=workload(rate_rps=60.0))
    problem = prepare(req)
    solved = place(req).objective.transfer_cost_ms
    heuristic = _cost(problem, greedy(problem))
    baseline = _cost(problem, unaware(problem, seed=1), aware=False)
    assert solved <= heuristic * (1 + 1e-9)
    assert heuristic < baseline
    assert solved < 0.6 * baseline


def test_decomposed_solve_is_valid() -> None:
    req = request(options=SolverOptions(time_limit_s=2.0, decompose_above=10))
    placement = place(req)
    _assert_sound(prepare(req), placement)
    assert placement.method in ("decomposed", "greedy")
    assert placement.status != "optimal"


def test_greedy_at_the_bound_skips_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform cluster: greedy meets the lower bound, so CP-SAT never runs."""
    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("CP-SAT ran although greedy met the bound")

    monkeypatch.setattr(placer, "solve_cpsat", no_search)
    monkeypatch.setattr(placer, "solve_decomposed", no_search)
    lines: list[str] = []
    placement = place(request(), progress=lines.append)
    assert len(lines) == 1 and "search skipped" in lines[0]
    assert placement.method == "greedy"
    assert placement.status in ("optimal", "feasible")  # never "heuristic": it is proved
    assert placement.gap <= 1 + SolverOptions().gap_tolerance
    assert any("CP-SAT search was skipped" in note for note in placement.notes)


def test_greedy_above_the_bound_still_searches() -> None:
    fabric = synth_cluster(SynthParams(zones=2, pods_per_zone=2, racks_per_pod=2,
                                       hosts_per_rack=4))
    req = request(fabric=fabric, tp_prefill=2, tp_decode=2, prefill=45, decode=70,
                  workload=workload(rate_rps=60.0))
    problem = prepare(req)
    assert _cost(problem, greedy(problem)) > analytic_bound_ms(problem) * 1.005
    placement = place(req)
    assert not any("CP-SAT search was skipped" in note for note in placement.notes)


def test_greedy_that_moves_instances_does_not_skip_the_search() -> None:
    """With a current placement, an equally cheap placement that moves less may exist."""
    first = place(request())
    moved = [i for i in first.instances if i.role == "decode"][:2]
    current = first.model_copy(update={"instances": tuple(
        i.model_copy(update={"role": "prefill" if i in moved else i.role})
        for i in first.instances)})
    placement = place(request(current=current))
    skipped = any("CP-SAT search was skipped" in note for note in placement.notes)
    assert not skipped or placement.moved == 0
