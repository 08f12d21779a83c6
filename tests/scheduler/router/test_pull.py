"""Prefix pull: a prefill worker copies a cached prefix from its holder over the fabric
(``CostParams.prefix_pull``) where that is cheaper than recomputing it."""

from __future__ import annotations

import numpy as np
import pytest

from policies.snapshot import Snapshot
from scheduler.prefix import PrefixIndex
from scheduler.router.cost import CostParams
from scheduler.router.pull import top_holders
from scheduler.router.router import Decision, Router, Unschedulable
from tests.scheduler.router.builders import (
    BLOCK,
    CROSS_ZONE,
    KV_BYTES,
    SAME_RAIL,
    SAME_RAIL_2,
    SOURCE,
    chain,
    fabric,
    index_with,
    policy,
    snapshot,
    worker,
)

HASHES = chain(1000)  # 16,000 tokens: 0.8 s of prefill at 20k tokens/s
HELD = 900


def _router(cached: dict[str, list[int]], pull: bool = True) -> Router:
    return Router(fabric(), policy(), index=index_with(cached),
                  cost=CostParams(prefix_pull=pull))


def _decided(result: Decision | Unschedulable) -> Decision:
    assert isinstance(result, Decision), result
    return result


def _busy_holder_snapshot(holder_gpu: str = SOURCE) -> Snapshot:
    # the holder has 5 s of queue; the idle worker is on the holder's rail leaf
    return snapshot([worker("holder", "prefill", holder_gpu, queued_tokens=100_000),
                     worker("idle", "prefill", SAME_RAIL_2), worker("d", "decode", SAME_RAIL)])


def test_an_idle_worker_pulls_the_busy_holders_prefix_instead_of_computing_it() -> None:
    snap = _busy_holder_snapshot()
    decision = _decided(_router({"holder": HASHES[:HELD]}).route(
        {"block_hashes": HASHES}, snap))
    assert decision.prefill.worker == "idle"
    pull = decision.pull
    assert pull is not None and pull.source == "holder" and pull.target == "idle"
    assert pull.block_hashes == tuple(HASHES[:HELD]) and pull.blocks == HELD
    assert pull.bytes == HELD * BLOCK * KV_BYTES
    assert pull.seconds == pytest.approx(7e-6 + pull.bytes / 50e9)  # same leaf: 7 µs, 50 GB/s
    assert pull.compute_saved_s == pytest.approx(HELD * BLOCK / 20_000)
    est = decision.estimate
    assert est.pull_s == pull.seconds
    assert est.prefill_compute_s == pytest.approx((1000 - HELD) * BLOCK / 20_000)
    assert est.total_s == pytest.approx(est.queue_s + est.pull_s + est.prefill_compute_s
                                        + est.transfer_s + est.admission_s)
    assert any("copies 900 cached prefix blocks from holder" in n for n in decision.notes)


def test_without_the_option_the_idle_worker_recomputes_the_prefix() -> None:
    snap = _busy_holder_snapshot()
    decision = _decided(_router({"holder": HASHES[:HELD]}, pull=False).route(
        {"block_hashes": HASHES}, snap))
    assert decision.prefill.worker == "idle" and decision.pull is None
    assert decision.estimate.pull_s == 0.0
    assert decision.estimate.prefill_compute_s == pytest.approx(1000 * BLOCK / 20_000)


def test_a_pull_over_a_slow_link_is_not_chosen_where_recomputing_is_faster() -> None:
    snap = _busy_holder_snapshot(CROSS_ZONE)
    r = _router({"holder": HASHES[:HELD]})
    r.set_tier_scales({"cross_zone": (1.0, 0.01)})  # 0.5 GB/s: 9.4 s to copy 0.72 s of work
    decision = _decided(r.route({"block_hashes": HASHES}, snap))
    assert decision.prefill.worker == "idle" and decision.pull is None


def test_a_pulls_fixed_overhead_is_in_its_price_and_set_on_a_live_router() -> None:
    snap = _busy_holder_snapshot()
    r = _router({"holder": HASHES[:HELD]})
    fabric_s = _decided(r.route({"block_hashes": HASHES}, snap)).pull
    assert fabric_s is not None
    r.set_pull_overhead(0.25)  # less than the 0.72 s the copy saves: it still pays
    pull = _decided(r.route({"block_hashes": HASHES}, snap)).pull
    assert pull is not None and pull.seconds == pytest.approx(fabric_s.seconds + 0.25)
    assert pull.compute_saved_s == pytest.approx(HELD * BLOCK / 20_000)
    r.set_pull_overhead(0.75)  # more: the idle worker recomputes the prefix
    decision = _decided(r.route({"block_hashes": HASHES}, snap))
    assert decision.prefill.worker == "idle" and decision.pull is None
    assert CostParams().pull_overhead_s == 0.0  # the simulator's copies: bytes only


def test_the_nearest_of_equal_holders_is_the_source() -> None:
    snap = snapshot([worker("far", "prefill", CROSS_ZONE, queued_tokens=100_000),
                     worker("near", "prefill", SOURCE, queued_tokens=100_000),
                     worker("idle", "prefill", SAME_RAIL_2), worker("d", "decode", SAME_RAIL)])
    decision = _decided(_router({"far": HASHES[:HELD], "near": HASHES[:HELD]}).route(
        {"block_hashes": HASHES}, snap))
    assert decision.pull is not None and decision.pull.source == "near"


def test_only_the_blocks_the_target_lacks_are_copied() -> None:
    snap = _busy_holder_snapshot()
    decision = _decided(_router({"holder": HASHES[:HELD], "idle": HASHES[:300]}).route(
        {"block_hashes": HASHES}, snap))
    assert decision.pull is not None
    assert decision.pull.block_hashes == tuple(HASHES[300:HELD])
    assert decision.pull.bytes == (HELD - 300) * BLOCK * KV_BYTES


def test_links_busy_with_transfers_make_a_pull_dearer() -> None:
    snap = _busy_holder_snapshot()
    free = _decided(_router({"holder": HASHES[:HELD]}).route({"block_hashes": HASHES}, snap))
    assert free.pull is not None
    busy = snapshot(list(snap.workers), link_load=dict.fromkeys(free.pull.links, 3))
    loaded = _decided(_router({"holder": HASHES[:HELD]}).route({"block_hashes": HASHES}, busy))
    assert loaded.pull is not None and loaded.pull.seconds > free.pull.seconds


def test_top_holders_are_the_longest_prefixes_longest_first() -> None:
    cached = np.zeros(10_000, dtype=np.int64)
    cached[[17, 4_000, 9_999, 123]] = [5, 9, 9, 1]
    assert top_holders(cached, 3).tolist() == [4_000, 9_999, 17]
    assert top_holders(cached, 8).tolist() == [4_000, 9_999, 17, 123]
    assert top_holders(np.zeros(4, dtype=np.int64), 2).tolist() == []


def test_a_prefix_the_router_just_sent_to_be_computed_is_pulled_only_once_valid() -> None:
    now = [0.0]
    index = PrefixIndex(clock=lambda: now[0])
    r = Router(fabric(), policy(), index=index, cost=CostParams(prefix_pull=True))
    idle = [worker("p1", "prefill", SOURCE), worker("p2", "prefill", SAME_RAIL_2),
            worker("d", "decode", SAME_RAIL)]
    first = _decided(r.route({"block_hashes": HASHES}, snapshot(idle)))
    computing = first.prefill.worker
    ready = first.estimate.queue_s + first.estimate.prefill_compute_s  # 0.8 s
    # its engine announces the prefill as it schedules it: listed, not computed yet
    index.resync(computing, HASHES)
    busy = snapshot([w if w.id != computing else
                     worker(w.id, "prefill", w.gpus[0], queued_tokens=16_000) for w in idle])
    follow = HASHES[:HELD] + chain(100, start=50_000)
    now[0] = ready / 2
    during = _decided(r.route({"block_hashes": follow}, busy))
    assert during.pull is None or during.pull.source != computing
    now[0] = ready + 0.01  # computed by now (as the router expects): it may be copied
    after = _decided(r.route({"block_hashes": follow}, busy))
    assert after.pull is not None and after.pull.source == computing
