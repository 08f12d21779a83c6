"""Prefix pull in the simulator: a prefill worker copies a cached prefix from the worker
holding it over the fabric, and the run counts those hits apart from local ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.cli.main import run as cli
from sim.metrics import Summary
from sim.report import RunRecord, comparison_table
from sim.scenarios import cluster, workload
from sim.simulator import SimConfig, Simulation
from sim.timing import EngineSpec
from sim.workloads import Trace
from tests.sim.builders import request, small_fabric

SPEC = "mooncake-conversation:scale=8,limit=200"


def _runs(capsys: pytest.CaptureFixture[str], policies: str) -> list[dict[str, Any]]:
    code = cli(["simulate", "--cluster", "three-level", "--workload", SPEC, "--policies",
                policies, "--json", "--no-plots"])
    assert code == 0
    runs: list[dict[str, Any]] = json.loads(capsys.readouterr().out)["runs"]
    return runs


def test_the_cli_flag_pulls_prefixes_and_counts_them_apart(
        capsys: pytest.CaptureFixture[str]) -> None:
    runs = _runs(capsys, "fabric-cost+no-prefix-pull,fabric-cost")  # pulls on by default
    assert [r["label"] for r in runs] == ["fabric-cost/solver+no-prefix-pull",
                                          "fabric-cost/solver"]
    off, on = (r["summary"] for r in runs)
    assert off["pulled_hit_ratio"] == 0.0 and off["pulls"] == []
    assert on["pulled_hit_ratio"] > 0.005
    assert on["prefix_hit_ratio"] > off["prefix_hit_ratio"]
    assert sum(t["bytes"] for t in on["pulls"]) > 0
    assert on["completed"] == off["completed"] == on["requests"]


def _pulled_run() -> tuple[Simulation, Summary]:
    scenario = cluster("three-level")
    fabric = scenario.fabric()
    config = SimConfig(tp=scenario.tp, prefill=scenario.prefill, decode=scenario.decode,
                       engine=EngineSpec(kv_blocks=10_000_000), prefix_pull=True)
    sim = Simulation(fabric, workload(SPEC, 0), config)
    return sim, sim.run()


def test_a_pull_copies_the_prefix_before_the_prefill_and_the_holder_keeps_it() -> None:
    sim, summary = _pulled_run()
    pulled = [j for j in sim.finished if j.pulled_blocks > 0]
    assert pulled
    block_bytes = sim.trace.block_tokens * sim.kv_bytes_per_token
    for job in pulled:
        hashes = job.request.block_hashes
        assert job.pull_source and job.pull_source != job.prefill
        # the copy's time (bytes over the fabric) passed before the prefill started
        assert job.pull_s > 0 and job.prefill_start_s >= job.routed_s + job.pull_s - 1e-9
        assert job.pull_bytes >= job.pulled_blocks * block_bytes
        # a copy, not a move: the holder still has the blocks (caches never evict here)
        assert sim.instances[job.pull_source].cache.match(hashes) >= job.pulled_blocks
        assert job.prefill_cached >= job.pulled_blocks
    blocks = sum(len(j.request.block_hashes) for j in sim.finished)
    assert summary.pulled_hit_ratio == pytest.approx(
        sum(j.pulled_blocks for j in pulled) / blocks)
    assert summary.pulled_hit_ratio <= summary.prefix_hit_ratio
    assert sim.network.link_load == {}  # every copy finished and left the links
    for inst in sim.instances.values():  # nothing still computing, waiting or pinned
        assert inst.pending == {} and inst.pull_waiting == [] and inst.cache.pinned == 0


def test_the_report_table_shows_local_and_pulled_hits() -> None:
    _, summary = _pulled_run()
    record = RunRecord(label="pull", cluster="three-level", workload=SPEC, policy="fabric-cost",
                       placement="solver", summary=summary)
    local = summary.prefix_hit_ratio - summary.pulled_hit_ratio
    assert (f"{local:.1%} local, {summary.pulled_hit_ratio:.1%} pulled"
            in comparison_table([record]))


def test_a_prefix_still_being_computed_is_not_pulled() -> None:
    # A new 32k-token prefix and, 10 ms later, three prompts that share it: the index
    # lists the prefix on A's prefill worker from the moment A's prefill starts, but it
    # is valid only once that prefill ends; a pull routed meanwhile would wait for it.
    shared = tuple(range(1, 65))
    first = request(rid="a", prompt_tokens=64 * 512, blocks=shared)
    rest = [request(rid=f"b{i}", arrival_s=0.01, prompt_tokens=66 * 512,
                    blocks=(*shared, 1000 + 2 * i, 1001 + 2 * i)) for i in range(3)]
    trace = Trace("burst", (first, *rest))
    fabric, distance = small_fabric()
    sim = Simulation(fabric, trace, SimConfig(prefill=5, decode=3, tp=4), distance=distance)
    sim.run()
    jobs = {j.request.id: j for j in sim.finished}
    assert len(jobs) == 4
    a = jobs["a"]
    for job in jobs.values():
        if job.pull_source == a.prefill:  # a copy of A's prefix only once it is computed
            assert job.routed_s >= a.prefill_end_s
