"""The joint fabric-cost decision: hand-computed cases where the fabric decides."""

from __future__ import annotations

import pytest

from scheduler.router.router import Decision, Unschedulable
from tests.scheduler.router.builders import (
    BLOCK,
    CROSS_ZONE,
    KV_BYTES,
    SAME_RAIL,
    SAME_RAIL_2,
    SOURCE,
    chain,
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


def test_decode_missing_many_tokens_does_not_prefill_locally() -> None:
    hashes = chain(400)
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    decision = _decided(router(cached={"p": hashes, "d": hashes[:100]}).route(
        {"block_hashes": hashes}, snap))
    assert decision.mode == "disaggregated" and decision.prefill.worker == "p"


def test_without_prefill_workers_decode_prefills_locally() -> None:
    snap = snapshot([worker("d", "decode", SAME_RAIL)])
    decision = _decided(router().route({"block_hashes": chain(3)}, snap))
    assert decision.mode == "local-prefill"


def test_session_affinity_keeps_the_sessions_pair() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d1", "decode", SAME_RAIL),
                     worker("d2", "decode", SAME_RAIL_2)])
    r = router(cached={"p": chain(4)})
    request = {"block_hashes": chain(4)}
    assert _decided(r.route(request, snap)).decode.worker == "d1"  # tie: first in order
    _decided(r.route({**request, "session": "s", "decode_worker": "d2"}, snap))
    assert _decided(r.route({**request, "session": "s"}, snap)).decode.worker == "d2"
    assert _decided(r.route({**request, "session": "other"}, snap)).decode.worker == "d1"


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
    from tests.scheduler.router.builders import fabric

    names = fabric().names
    workers = [worker(f"w{i}", "prefill" if i % 2 else "decode", names[i]) for i in range(128)]
    snap = snapshot(workers)
    hashes = chain(20)
    decision = _decided(router(cached={"w7": hashes, "w100": hashes[:20]}).route(
        {"block_hashes": hashes}, snap))
    assert decision.considered < 64 * 64
    assert decision.decode.worker == "w100" and decision.mode == "local-prefill"
