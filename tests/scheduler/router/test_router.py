"""The joint fabric-cost decision: hand-computed cases where the fabric decides."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.router.cost import CostParams
from scheduler.router.router import Decision, Router, Unschedulable
from tests.scheduler.router.builders import (
    BLOCK,
    CROSS_ZONE,
    KV_BYTES,
    SAME_RAIL,
    SAME_RAIL_2,
    SOURCE,
    chain,
    context,
    fabric,
    index_with,
    policy,
    router,
    snapshot,
    worker,
)

# From tests/topology/builders.py EXPECTED: (latency µs, GB/s) per tier.
SAME_LEAF = (7.0, 50.0)
CROSS = (2011.0, 50.0)


def _decided(result: Decision | Unschedulable) -> Decision:
    assert isinstance(result, Decision), result
    return result


def test_same_rail_decode_beats_cross_zone_with_equal_load_and_cache() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("far", "decode", CROSS_ZONE),
                     worker("near", "decode", SAME_RAIL)])
    hashes = chain(4)
    decision = _decided(router(cached={"p": hashes}).route(
        {"block_hashes": hashes}, snap))
    assert (decision.prefill.worker, decision.decode.worker) == ("p", "near")
    nbytes = 4 * BLOCK * KV_BYTES
    assert decision.transfer.bytes == nbytes
    assert decision.transfer.tier == "same_leaf"
    assert decision.estimate.transfer_s == pytest.approx(SAME_LEAF[0] * 1e-6
                                                         + nbytes / (SAME_LEAF[1] * 1e9))
    far = next(o for o in decision.runners_up if o.decode == "far")
    assert far.ttft_s == pytest.approx(CROSS[0] * 1e-6 + nbytes / (CROSS[1] * 1e9))
    assert 0.0 < far.score < 1.0


def test_warm_far_decode_beats_cold_near_when_the_bytes_saved_decide() -> None:
    hashes = chain(1000)
    snap = snapshot([worker("p", "prefill", SOURCE), worker("near", "decode", SAME_RAIL),
                     worker("far", "decode", CROSS_ZONE)])
    r = router(cached={"p": hashes, "far": hashes[:990]})
    decision = _decided(r.route({"block_hashes": hashes}, snap))
    assert decision.decode.worker == "far" and decision.mode == "disaggregated"
    moved = 10 * BLOCK * KV_BYTES
    assert decision.transfer.bytes == moved
    assert decision.estimate.total_s == pytest.approx(CROSS[0] * 1e-6 + moved / 50e9)
    near = next(o for o in decision.runners_up if o.decode == "near")
    assert near.ttft_s == pytest.approx(SAME_LEAF[0] * 1e-6 + 1000 * BLOCK * KV_BYTES / 50e9)


def test_transfer_lists_only_the_blocks_the_decode_worker_lacks() -> None:
    hashes = chain(12)
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    decision = _decided(router(cached={"p": hashes, "d": hashes[:5]}).route(
        {"block_hashes": hashes}, snap))
    assert decision.transfer.block_hashes == tuple(hashes[5:])
    assert decision.transfer.blocks == 7 and decision.decode.cached_blocks == 5
    assert decision.prefill.cached_blocks == 12
    assert decision.transfer.bytes == 7 * BLOCK * KV_BYTES


def test_decode_holding_most_of_the_prefix_prefills_locally() -> None:
    hashes = chain(40)
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    decision = _decided(router(cached={"d": hashes[:39]}).route({"block_hashes": hashes}, snap))
    assert decision.mode == "local-prefill"
    assert decision.prefill.worker == decision.decode.worker == "d"
    assert decision.transfer.blocks == 0 and decision.transfer.bytes == 0
    assert decision.estimate.prefill_compute_s == pytest.approx(BLOCK / 20_000)
    assert any("d prefills locally" in note for note in decision.notes)


def test_decode_missing_many_tokens_does_not_prefill_locally() -> None:
    hashes = chain(400)
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    decision = _decided(router(cached={"p": hashes, "d": hashes[:100]}).route(
        {"block_hashes": hashes}, snap))
    assert decision.mode == "disaggregated" and decision.prefill.worker == "p"


def test_without_prefill_workers_decode_prefills_locally() -> None:
    snap = snapshot([worker("d", "decode", SAME_RAIL)])
    decision = _decided(router().route({"block_hashes": chain(300)}, snap))
    assert decision.mode == "local-prefill"
    assert any("no prefill worker" in note for note in decision.notes)


def test_prefill_workers_without_kv_space_leave_the_decode_worker_to_prefill() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE, free_kv_blocks=0),
                     worker("d", "decode", SAME_RAIL)])
    decision = _decided(router().route({"block_hashes": chain(300)}, snap))
    assert decision.mode == "local-prefill" and decision.decode.worker == "d"


def test_session_affinity_keeps_the_sessions_pair() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d1", "decode", SAME_RAIL),
                     worker("d2", "decode", SAME_RAIL_2)])
    r = router(cached={"p": chain(4)})
    request = {"block_hashes": chain(4)}
    assert _decided(r.route(request, snap)).decode.worker == "d1"  # tie: first in order
    _decided(r.route({**request, "session": "s", "decode_worker": "d2"}, snap))
    assert _decided(r.route({**request, "session": "s"}, snap)).decode.worker == "d2"
    assert _decided(r.route({**request, "session": "other"}, snap)).decode.worker == "d1"


def test_predictions_make_the_next_turn_find_its_prefix() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    r = Router(fabric(), policy("least-loaded"), predict_ttl_s=60.0)
    first = _decided(r.route({"block_hashes": chain(40)}, snap))
    assert first.prefill.cached_blocks == 0
    second = _decided(r.route({"block_hashes": chain(48)}, snap))
    assert second.prefill.cached_blocks == second.decode.cached_blocks == 40
    assert second.transfer.block_hashes == tuple(chain(48)[40:])


def test_session_memory_is_bounded() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d1", "decode", SAME_RAIL),
                     worker("d2", "decode", SAME_RAIL_2)])
    r = Router(fabric(), policy(), max_sessions=2)
    for name in ("s1", "s2", "s3"):
        _decided(r.route({"block_hashes": chain(4), "session": name, "decode_worker": "d2"},
                         snap))
    assert r.session("s1") is None
    assert r.session("s2") == r.session("s3") == ("d2", "d2")  # 64 tokens: local prefill


def test_placement_pairing_breaks_a_tie() -> None:
    workers = [worker("p", "prefill", SOURCE), worker("d1", "decode", SAME_RAIL),
               worker("d2", "decode", SAME_RAIL_2)]
    snap = snapshot(workers, preferred_pairs={("p", "d2"): 1.0})
    decision = _decided(router(cached={"p": chain(4)}).route({"block_hashes": chain(4)}, snap))
    assert decision.decode.worker == "d2"


def test_links_busy_with_other_transfers_make_a_pair_dearer() -> None:
    workers = [worker("p", "prefill", SOURCE), worker("d1", "decode", SAME_RAIL),
               worker("d2", "decode", SAME_RAIL_2)]
    quiet = snapshot(workers)
    busy_link = "nic:z0-p0-r1-h01/mlx5_0:rx"
    busy = snapshot(workers, link_load={busy_link: 3})
    r = router(cached={"p": chain(8)})
    assert _decided(r.route({"block_hashes": chain(8)}, quiet)).decode.worker == "d1"
    decision = _decided(r.route({"block_hashes": chain(8)}, busy))
    assert decision.decode.worker == "d2"
    d1 = next(o for o in decision.runners_up if o.decode == "d1")
    nbytes = 8 * BLOCK * KV_BYTES
    assert d1.ttft_s == pytest.approx(SAME_LEAF[0] * 1e-6 + nbytes / (50e9 / 4))


def test_a_busy_uplink_is_shared_by_all_lanes_of_a_tp_transfer() -> None:
    tp4 = [f"z0-p0-r0-h00/gpu{i}" for i in range(4)]
    far = [f"z1-p0-r0-h00/gpu{i}" for i in range(4)]
    workers = [worker("p", "prefill", gpus=tp4), worker("d", "decode", gpus=far)]
    uplink = "zone:z0:up"
    capacity = fabric().link_capacity_gb_per_s(uplink)
    busy = snapshot(workers, link_load={uplink: 7})
    r = router(cached={"p": chain(8)})
    decision = _decided(r.route({"block_hashes": chain(8)}, busy))
    # four lanes share an eighth of the uplink: each gets capacity / 8 / 4
    assert decision.transfer.bottleneck_gb_per_s == pytest.approx(
        min(50.0, capacity / 8 / 4))


def test_decode_without_free_kv_blocks_is_unschedulable_with_a_reason() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE),
                     worker("d", "decode", SAME_RAIL, free_kv_blocks=2)])
    result = router().route({"block_hashes": chain(5)}, snap)
    assert isinstance(result, Unschedulable)
    assert "free KV blocks" in result.reasons[0]


def test_decode_reusing_its_cached_prefix_needs_fewer_free_blocks() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE),
                     worker("d", "decode", SAME_RAIL, free_kv_blocks=2)])
    result = router(cached={"d": chain(3)}).route({"block_hashes": chain(5)}, snap)
    assert isinstance(result, Decision)


def test_decisions_on_a_bigger_cluster_prune_candidates() -> None:
    names = fabric().names
    workers = [worker(f"w{i}", "prefill" if i % 2 else "decode", names[i]) for i in range(128)]
    snap = snapshot(workers)
    hashes = chain(20)
    decision = _decided(router(cached={"w7": hashes, "w100": hashes[:20]}).route(
        {"block_hashes": hashes}, snap))
    assert decision.considered < 64 * 64
    assert decision.decode.worker == "w100" and decision.mode == "local-prefill"


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_pruning_keeps_the_exhaustive_optimum_within_reach(seed: int) -> None:
    """On random 128-worker states the pruned choice is never better than the exhaustive
    one (which is optimal) and stays close to it (in practice: equal)."""
    rng = random.Random(seed)
    names = fabric().names
    workers = [worker(f"w{i}", "prefill" if i % 2 else "decode", names[i],
                      queued_tokens=rng.randrange(40_000), running_requests=rng.randrange(300),
                      free_kv_blocks=rng.randrange(400)) for i in range(128)]
    hashes = chain(200)
    cached = {f"w{i}": hashes[: rng.randrange(200)] for i in rng.sample(range(128), 30)}
    snap = snapshot(workers, link_load={"leaf:z0-p0-rail0:up": rng.randrange(4)})
    pruned = router(cached=cached).route({"block_hashes": hashes}, snap)
    full = router(cached=cached, exhaustive_below=1_000).route({"block_hashes": hashes}, snap)
    if isinstance(full, Unschedulable):
        assert isinstance(pruned, Unschedulable)
        return
    pruned = _decided(pruned)
    assert pruned.considered <= full.considered
    assert full.estimate.total_s <= pruned.estimate.total_s * (1 + 1e-9)
    assert pruned.estimate.total_s <= full.estimate.total_s * 1.25


# -- the decode side's price ---------------------------------------------------------------


def test_a_busy_decode_worker_holding_the_prefix_loses_to_an_idle_one() -> None:
    # The prefix on "busy" saves a few milliseconds of transfer; its 40 running requests
    # would each be slowed, and the newcomer's every token too: the idle worker wins.
    hashes = chain(40)
    snap = snapshot([worker("p", "prefill", SOURCE),
                     worker("busy", "decode", SAME_RAIL, running_requests=40,
                            free_kv_blocks=60_000),
                     worker("idle", "decode", SAME_RAIL_2)])
    decision = _decided(router(cached={"p": hashes, "busy": hashes}).route(
        {"block_hashes": hashes}, snap))
    assert decision.decode.worker == "idle" and decision.mode == "disaggregated"
    # with the decode side priced at zero, the cache holder wins again (the old behaviour)
    blind = Router(fabric(), policy(), index=index_with({"p": hashes, "busy": hashes}),
                   cost=CostParams(decode_weight=0.0, kv_pressure_s=0.0, stall_weight=0.0,
                                   tail_weight=0.0))
    assert _decided(blind.route({"block_hashes": hashes}, snap)).decode.worker == "busy"


def test_local_prefill_is_refused_where_it_would_stall_a_full_batch() -> None:
    hashes = chain(40)
    idle = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    cached = {"d": hashes[:30]}
    assert _decided(router(cached=cached).route(
        {"block_hashes": hashes}, idle)).mode == "local-prefill"
    busy = snapshot([worker("p", "prefill", SOURCE),
                     worker("d", "decode", SAME_RAIL, running_requests=64)])
    decision = _decided(router(cached=cached).route({"block_hashes": hashes}, busy))
    assert decision.mode == "disaggregated" and decision.prefill.worker == "p"


def test_kv_occupancy_past_the_watermark_is_priced() -> None:
    snap = snapshot([worker("roomy", "decode", SAME_RAIL),
                     worker("full", "decode", SAME_RAIL_2, free_kv_blocks=5_000)])
    ctx = context(snap, chain(4))
    costs = ctx.cost.decode_costs(ctx, np.arange(2))
    assert costs[1] - costs[0] > 0.9 * CostParams().kv_pressure_s


def test_kv_promised_to_requests_still_prefilling_is_priced_as_in_use() -> None:
    params = CostParams()
    # the same blocks in use, or free but promised to requests whose KV has not landed
    snap = snapshot([worker("used", "decode", SAME_RAIL, free_kv_blocks=60_000),
                     worker("promised", "decode", SAME_RAIL_2, promised_kv_blocks=40_000),
                     worker("idle", "decode", SAME_RAIL_2)])
    ctx = context(snap, chain(4))
    costs = ctx.cost.decode_costs(ctx, np.arange(3))
    assert costs[0] == costs[1] > costs[2]
    # promised past the watermark: the occupancy price, as for blocks in use
    over = snapshot([worker("promised", "decode", SAME_RAIL, promised_kv_blocks=95_000),
                     worker("idle", "decode", SAME_RAIL_2)])
    ctx = context(over, chain(4))
    costs = ctx.cost.decode_costs(ctx, np.arange(2))
    assert costs[0] - costs[1] > 0.9 * params.kv_pressure_s


def test_a_decode_worker_without_room_once_its_promises_land_is_passed_over() -> None:
    hashes = chain(40)  # both decode workers at the occupancy price's ceiling
    workers = [worker("p", "prefill", SOURCE),
               worker("near", "decode", SAME_RAIL, free_kv_blocks=50, capacity_kv_blocks=100),
               worker("far", "decode", SAME_RAIL_2, free_kv_blocks=40, capacity_kv_blocks=100,
                      running_requests=8)]
    assert _decided(router().route({"block_hashes": hashes},
                                   snapshot(workers))).decode.worker == "near"
    workers[1] = replace(workers[1], promised_kv_blocks=20)  # 30 left: the prompt needs 40
    assert _decided(router().route({"block_hashes": hashes},
                                   snapshot(workers))).decode.worker == "far"
    # no worker with room once its promises land: those with room now still serve
    workers[2] = replace(workers[2], promised_kv_blocks=10)
    assert _decided(router().route({"block_hashes": hashes},
                                   snapshot(workers))).decode.worker == "near"
