"""Scenario documents: validation with paths, the packaged ones, and the CLI wire."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sim.scenario_file import load_scenario, packaged_scenarios
from sim.scenarios import TRACE_DIR, workload
from sim.simulator import simulate
from topology.distance import DistanceModel
from topology.errors import ValidationError

GOOD = """\
version: 1
name: tiny
cluster: {synth: {zones: 1, pods_per_zone: 1, racks_per_pod: 2, hosts_per_rack: 1,
                  rails: false}, slow_racks: {every: 2, nic_gbit: 100},
          edges: {zone_link: {latency_us: 2000, bandwidth_gb_per_s: 3}}}
instances: {prefill: 2, decode: 2, tp: 4}
engine: {max_num_batched_tokens: 2048, kv_blocks: 400, eviction: parent-first}
workload: agentic:sessions=4
arrivals: raw
policies: [round-robin]
"""


def test_every_packaged_scenario_loads_and_builds_its_fabric() -> None:
    names = packaged_scenarios()
    assert "dynamo-mocker" in names
    for name in names:
        doc = load_scenario(name)
        assert doc.fabric().hosts


def test_a_scenario_sets_the_fabric_engine_and_arrivals(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(GOOD)
    doc = load_scenario(str(path))
    fabric = doc.fabric()
    speeds = sorted({n.gbit for h in fabric.hosts for n in h.nics})
    assert speeds == [100.0, 400.0]  # one rack of two has the slower NICs
    assert fabric.links.edges.zone_link.bandwidth_gb_per_s == 3
    config = doc.config("round-robin")
    assert config.engine.kv_blocks == 400 and config.prefill == 2
    assert doc.workload_spec().endswith("arrivals=raw")


@pytest.mark.parametrize(("text", "path"), [
    (GOOD.replace("kv_blocks: 400", "kv_blocks: 0"), "engine.kv_blocks"),
    (GOOD.replace("eviction: parent-first", "eviction: random"), "engine.eviction"),
    (GOOD.replace("arrivals: raw", "arrivals: bursty"), "arrivals"),
    (GOOD.replace("version: 1", "version: 2"), "version"),
    (GOOD.replace("rails: false", "rails: false, racks: 3"), "cluster"),
    (GOOD.replace("prefill: 2,", "prefill: -1,"), "instances.prefill"),
    (GOOD + "router: {prefill_ttl_s: 0}\n", "router.prefill_ttl_s"),
    (GOOD + "router: {prefix_pull: maybe}\n", "router.prefix_pull"),
])
def test_bad_scenarios_name_the_field(tmp_path: Path, text: str, path: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ValidationError) as err:
        load_scenario(str(file))
    assert path in str(err.value) and "bad.yaml" in str(err.value)


def test_cli_runs_a_scenario_file_and_rejects_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "tiny.yaml"
    good.write_text(GOOD)
    cmd = [sys.executable, "-m", "api.cli.main", "simulate", "--scenario", str(good), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert '"policy": "round-robin"' in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("kv_blocks: 400", "kv_blocks: many"))
    cmd[5] = str(bad)
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert failed.returncode != 0
    assert "engine.kv_blocks" in failed.stderr and "Traceback" not in failed.stderr


def _cli_runs(path: Path) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "api.cli.main", "simulate", "--scenario", str(path), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    runs: list[dict[str, Any]] = json.loads(done.stdout)["runs"]
    return runs


def test_the_router_predicts_a_routed_prompt_on_its_prefill_worker(tmp_path: Path) -> None:
    # router.prefill_ttl_s: the router counts a routed prompt's blocks as held by the
    # worker that computes them until its engine reports them (Dynamo's approximate
    # mode); without it only the engines' KV events feed the prefix index.
    plain = tmp_path / "plain.yaml"
    plain.write_text(GOOD.replace("[round-robin]", "[fabric-cost]"))
    predicted = tmp_path / "predicted.yaml"
    predicted.write_text(plain.read_text() + "router: {prefill_ttl_s: 30}\n")
    off, on = _cli_runs(plain)[0]["summary"], _cli_runs(predicted)[0]["summary"]
    assert off["predicted_blocks"] == 0
    assert on["predicted_blocks"] > 0
    assert on["completed"] == off["completed"] == on["requests"]


def test_the_mocker_scenario_replays_a_trace_as_dynamos_mocker_does(tmp_path: Path) -> None:
    # The same 150 requests through Dynamo's mocker (ai-dynamo-runtime) and our
    # simulator with the packaged dynamo-mocker scenario, round-robin, aggregated.
    from dynamo._core import run_mocker_trace_replay

    doc = load_scenario("dynamo-mocker")
    trace_file = tmp_path / "head.jsonl"
    with (TRACE_DIR / "mooncake" / "conversation_trace.jsonl").open() as src:
        trace_file.write_text("".join(itertools.islice(src, 150)))
    engine = {"engine": {"block_size": 512, "num_gpu_blocks": doc.engine.kv_blocks,
                         "max_num_batched_tokens": doc.engine.max_num_batched_tokens}}
    theirs = run_mocker_trace_replay([str(trace_file)], extra_engine_args=engine,
                                     num_workers=8, trace_block_size=512).summary
    fabric = doc.fabric()
    ours = simulate(fabric, workload("mooncake-conversation:limit=150,arrivals=raw"),
                    doc.config("round-robin", aggregated=True), distance=DistanceModel(fabric))
    assert ours.ttft.p50 * 1e3 == pytest.approx(theirs["median_ttft_ms"], rel=0.1)
    assert ours.ttft.p99 * 1e3 == pytest.approx(theirs["p99_ttft_ms"], rel=0.1)
    assert ours.reused_token_ratio == pytest.approx(theirs["prefix_cache_reused_ratio"], abs=0.01)


def test_a_scenario_turns_prefix_pulls_off(tmp_path: Path) -> None:
    file = tmp_path / "pull.yaml"
    file.write_text(GOOD + "router: {prefix_pull: false}\n")
    doc = load_scenario(str(file))
    assert not doc.config("fabric-cost").prefix_pull
    assert doc.config("fabric-cost", prefix_pull=True).prefix_pull
    assert load_scenario("tcp-zones").config("fabric-cost").prefix_pull  # default on
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "simulate", "--scenario",
                           str(file), "--policies", "fabric-cost,fabric-cost+prefix-pull",
                           "--json", "--no-plots"], capture_output=True, text=True,
                          check=False, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    labels = [r["label"] for r in json.loads(done.stdout)["runs"]]
    assert labels == ["fabric-cost/solver+no-prefix-pull", "fabric-cost/solver"]
