"""Seeded scenarios: metrics within ranges, determinism, and the two sanity properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.profile import policy_names
from sim.engines import Job
from sim.metrics import Summary
from sim.simulator import SimConfig, Simulation
from sim.workloads import Trace, load_mooncake, without_sharing
from tests.sim.builders import FIXTURES, request, run, small_fabric, small_trace, thin_fabric
from topology.tiers import Tier


def _figures(summary: Summary) -> dict[str, object]:
    data = summary.model_dump()
    data.pop("wall_s")
    # utilisation sums per-instance shares: equal runs may differ in the last bit
    for key in ("gpu_utilisation", "prefill_utilisation", "decode_utilisation"):
        data[key] = round(data[key], 9)
    return data


def _cross_zone_bytes(summary: Summary) -> int:
    return sum(t.bytes for t in summary.transfers if t.tier == Tier.CROSS_ZONE.label)


def test_a_seeded_run_is_repeatable() -> None:
    trace = small_trace(sessions=15, seed=4)
    assert _figures(run(trace, seed=1)) == _figures(run(trace, seed=1))


def test_agentic_run_metrics_fall_in_plausible_ranges() -> None:
    trace = small_trace(sessions=30)
    s = run(trace)
    assert s.completed == s.requests == len(trace.requests) and s.dropped == 0
    assert 0.02 < s.ttft.p50 <= s.ttft.p90 <= s.ttft.p99 < 10.0
    assert 0.015 < s.tpot.p50 < 0.1  # Llama-3-70B TP4 decode steps: tens of ms
    assert s.e2e.p50 > s.ttft.p50
    assert 0.3 < s.prefix_hit_ratio <= s.ideal_hit_ratio
    assert 0.0 < s.prefill_utilisation < 1.0 and 0.0 < s.decode_utilisation <= 1.0
    assert 0.0 < s.goodput_rps * trace.duration_s <= s.completed + 1e-6
    assert 0.0 < s.slo_attainment <= 1.0
    assert s.bytes_moved == sum(t.bytes for t in s.transfers) > 0
    assert all(t.count == sum(t.histogram) for t in s.transfers)


@pytest.mark.parametrize("policy", policy_names())
def test_every_packaged_policy_serves_the_mooncake_fixture(policy: str) -> None:
    trace = load_mooncake(FIXTURES / "mooncake_small.jsonl")
    s = run(trace, policy=policy, placement="greedy")
    assert s.completed == 24 and s.dropped == 0
    assert s.ttft.p99 < 20.0


def test_aggregated_instances_move_no_kv_unless_the_policy_splits() -> None:
    s = run(small_trace(sessions=10), aggregated=True, policy="round-robin")
    assert s.bytes_moved == 0 and s.transfers == ()
    assert s.local_prefill_share == 1.0 and s.split_in_aggregated == 0
    # A policy that picks two different aggregated workers is executed as chosen (the
    # KV moves between them) and counted, not silently folded into one worker.
    split = run(small_trace(sessions=10), aggregated=True)
    assert split.split_in_aggregated == sum(t.count for t in split.transfers) > 0
    assert split.local_prefill_share == 1 - split.split_in_aggregated / split.completed


def test_a_request_larger_than_any_cache_is_dropped_not_stuck() -> None:
    huge = request(prompt_tokens=3_000_000, output_tokens=4)
    trace = Trace("huge", (huge, request(rid="ok", arrival_s=0.1)))
    s = run(trace, placement="greedy")
    assert s.dropped == s.dropped_too_big == 1 and s.dropped_after_retries == 0
    assert s.completed == 1


# -- sanity: an infinitely fast fabric makes topology-awareness irrelevant --------------


def test_infinite_fabric_aware_and_unaware_converge() -> None:
    trace = small_trace(sessions=40).scaled(3)
    aware = run(trace, thin=True, infinite_fabric=True)
    unaware = run(trace, thin=True, infinite_fabric=True, placement="unaware",
                  blind_fabric=True)
    for s in (aware, unaware):
        assert all(t.latency.p99 == 0.0 for t in s.transfers)
    assert unaware.goodput_rps == pytest.approx(aware.goodput_rps, rel=0.1)
    assert unaware.ttft.p50 == pytest.approx(aware.ttft.p50, rel=0.15)
    assert unaware.prefix_hit_ratio == pytest.approx(aware.prefix_hit_ratio, abs=0.03)


def test_on_a_thin_zone_uplink_awareness_keeps_kv_in_zone() -> None:
    trace = small_trace(sessions=40).scaled(3)
    aware = run(trace, thin=True)
    unaware = run(trace, thin=True, placement="unaware", blind_fabric=True)
    # Crossing stays a priced option (a cached prefill worker in the other zone can beat
    # a queue, a decode worker there with faster steps can beat a slow one here): measured
    # 68.6 against 91.3 GB since decode steps are priced from the context their sequences
    # read (66.2 against 94.6 before; 40.6 against 75.4 before the step-time tail).
    assert _cross_zone_bytes(aware) < 0.8 * _cross_zone_bytes(unaware)
    assert aware.bytes_no_uplink_share > unaware.bytes_no_uplink_share


# -- sanity: without shared prefixes, prefix affinity brings nothing ---------------------


def test_without_shared_prefixes_prefix_affinity_changes_nothing() -> None:
    trace = without_sharing(small_trace(sessions=30))
    aware = run(trace)
    blind = run(trace, blind_prefix=True)
    assert aware.prefix_hit_ratio == blind.prefix_hit_ratio == 0.0
    assert _figures(aware) == _figures(blind)


def test_with_shared_prefixes_prefix_affinity_finds_more_hits() -> None:
    trace = small_trace(sessions=30)
    aware = run(trace)
    blind = run(trace, blind_prefix=True)
    assert aware.prefix_hit_ratio > blind.prefix_hit_ratio
    # fewer prompt tokens to compute: a shorter time to first token
    assert aware.ttft.mean < blind.ttft.mean


def test_rate_scaling_raises_latency() -> None:
    trace = small_trace(sessions=30)
    calm, busy = run(trace), run(replace(trace.scaled(4)))
    assert busy.ttft.p90 > calm.ttft.p90


@given(st.integers(0, 1000), st.sampled_from(["fabric-cost", "least-loaded", "prefix-only",
                                              "label-curve"]),
       st.sampled_from([1.0, 4.0]), st.booleans())
@settings(max_examples=8, deadline=None)
def test_after_a_run_every_block_link_and_slot_is_released(seed: int, policy: str,
                                                           scale: float, thin: bool) -> None:
    fabric, distance = thin_fabric() if thin else small_fabric()
    trace = small_trace(sessions=6, seed=seed).scaled(scale)
    sim = Simulation(fabric, trace, SimConfig(policy=policy, placement="greedy", prefill=5,
                                              decode=3, seed=seed), distance=distance)
    summary = sim.run()
    assert summary.completed == len(trace.requests)
    assert sim.network.link_load == {}
    for inst in sim.instances.values():
        assert inst.cache.pinned == 0
        assert not inst.running and not inst.waiting and not inst.prefills
        assert inst.incoming == 0 and inst.queued_tokens == 0 and inst.promised_blocks == 0
    for job in sim.finished:
        r = job.request
        assert r.arrival_s <= job.prefill_start_s <= job.prefill_end_s <= job.first_token_s
        assert job.first_token_s < job.done_s or r.output_tokens == 1
        if not job.local:
            assert job.prefill_end_s <= job.kv_ready_s <= job.first_token_s


def test_a_routed_remote_prefill_promises_its_decode_worker_blocks_until_they_are_taken(
) -> None:
    fabric, distance = small_fabric()
    trace = small_trace(sessions=2, seed=0)
    sim = Simulation(fabric, trace, SimConfig(placement="greedy", prefill=5, decode=3),
                     distance=distance)
    job = Job(max(trace.requests, key=lambda r: r.prompt_tokens))
    sim._route(job)
    assert not job.local
    decode = sim.instances[job.decode]
    blocks = sim.cost.promised_blocks(len(job.request.block_hashes), trace.block_tokens)
    assert job.promised_blocks == decode.promised_blocks == blocks > 0
    assert sim.router.snapshot({}).worker(job.decode).promised_kv_blocks == blocks
    assert decode.try_reserve(job)  # the blocks are taken: out of the free count instead
    assert job.promised_blocks == decode.promised_blocks == 0


def test_the_router_sees_the_context_each_decode_worker_reads() -> None:
    """Agentic sessions share a system prompt: a decode worker running several of them
    holds it once and reads it once per sequence. The snapshot the router prices from
    carries what the engine's steps read (its running sequences' contexts), not only
    the blocks held."""
    fabric, distance = small_fabric()
    sim = Simulation(fabric, small_trace(sessions=30),
                     SimConfig(prefill=5, decode=3, tp=4), distance=distance)
    adapter, seen = sim.router, []
    build = adapter.snapshot

    def snapshot(link_load: dict[str, int]) -> object:
        snap = build(link_load)
        engines = {i.id: i for i in adapter.instances}
        for worker, context in zip(snap.workers, snap.context.tolist(), strict=True):
            inst = engines[worker.id]
            if worker.can_decode:
                assert context == inst.ctx_sum
                held = (inst.cache.capacity - inst.cache.free) * inst.block_tokens
                seen.append(context > held)
            else:
                assert context == 0
        return snap

    adapter.snapshot = snapshot  # type: ignore[method-assign]
    sim.run()
    assert any(seen) and len(seen) > 100
