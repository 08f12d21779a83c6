"""Operator rules: pins, forbids, drained GPUs and failure-domain rules are respected."""

from __future__ import annotations

from collections import Counter

from scheduler.placement import FailureRule, RoleRule, SolverOptions, check, place, prepare
from scheduler.placement.assemble import assemble
from scheduler.placement.cpsat import solve_cpsat
from scheduler.placement.unaware import unaware
from tests.scheduler.placement.builders import request
from tests.topology.builders import small_fabric


def test_pinned_host_serves_only_prefill() -> None:
    req = request(rules=(RoleRule("z0-p1-r1-h01", "prefill"),))
    placement = place(req)
    assert check(prepare(req), placement) == ()
    on_host = [i for i in placement.instances if i.host == "z0-p1-r1-h01"]
    assert sum(len(i.gpus) for i in on_host) == 8
    assert {i.role for i in on_host} == {"prefill"}


def test_forbidden_role_stays_out_of_a_zone() -> None:
    req = request(rules=(RoleRule("z1", "decode", "forbid"),))
    placement = place(req)
    assert check(prepare(req), placement) == ()
    assert all(i.zone == "z0" for i in placement.by_role("decode"))


def test_drained_gpus_and_hosts_are_never_used() -> None:
    drained = ("z0-p0-r0-h00", "z0-p0-r0-h01/gpu3", "z1-p1-r0")
    placement = place(request(exclude=drained))
    used = {gpu for i in placement.instances for gpu in i.gpus}
    assert not any(gpu.startswith(("z0-p0-r0-h00/", "z1-p1-r0-")) for gpu in used)
    assert "z0-p0-r0-h01/gpu3" not in used


def test_rack_share_rule_caps_each_rack() -> None:
    req = request(failure=FailureRule(max_rack_share=0.2))
    placement = place(req)
    assert check(prepare(req), placement) == ()
    # 20 % of 10 prefill and of 14 decode instances: at most 2 of each per rack.
    per_rack = Counter((i.rack, i.role) for i in placement.instances)
    assert max(per_rack.values()) <= 2


def test_zone_independence_puts_full_capacity_in_each_zone() -> None:
    req = request(prefill=4, decode=6, failure=FailureRule(zone_independent=True))
    placement = place(req)
    assert check(prepare(req), placement) == ()
    per_zone = Counter((i.zone, i.role) for i in placement.instances)
    assert per_zone == {("z0", "prefill"): 4, ("z0", "decode"): 6,
                        ("z1", "prefill"): 4, ("z1", "decode"): 6}
    assert placement.traffic.cross_zone < 1e-9


def test_thin_pod_uplinks_are_respected_where_unaware_overloads_them() -> None:
    # 400:1 pod uplinks leave 4 GB/s per pod and 2 GB/s per zone for 26 GB/s of KV.
    req = request(fabric=small_fabric(pod_oversubscription=400.0))
    problem = prepare(req)
    placement = place(req)
    assert check(problem, placement) == ()
    assert all(load.utilisation <= 1 for load in placement.busiest_links)
    roles = unaware(problem, seed=1)
    assert roles is not None
    _, violations = assemble(problem, roles, method="unaware", status="heuristic",
                             solve_time_s=0.0, lower_bound_ms=0.0, lower_bound_source="",
                             topology_aware=False)
    assert any(v.startswith("link pod:") for v in violations)


def test_pins_hold_when_the_problem_is_decomposed() -> None:
    req = request(rules=(RoleRule("z1-p0-r1-h00", "decode"),),
                  options=SolverOptions(time_limit_s=1.0, decompose_above=10))
    placement = place(req)
    assert check(prepare(req), placement) == ()
    on_host = [i for i in placement.instances if i.host == "z1-p0-r1-h00"]
    assert [i.role for i in on_host] == ["decode", "decode"]


def test_a_part_keeps_only_its_own_pins() -> None:
    problem = prepare(request(rules=(RoleRule("z1-p0-r1-h00", "decode"),
                                     RoleRule("z0-p0-r0-h00", "prefill"))))
    zone0 = [c.index for c in problem.candidates if problem.domains[c.domain].zone == 0]
    part = problem.restrict(zone0, prefill=5, decode=7)
    assert {problem.dm.names[g].split("/")[0] for g in part.pins["prefill"]} == {"z0-p0-r0-h00"}
    assert part.pins["decode"] == frozenset()
    outcome = solve_cpsat(part, time_limit_s=1.0)
    assert outcome.roles is not None
