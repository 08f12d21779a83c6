"""The fabric cost model: its figures, the per-request terms it keeps, and the router's
reuse of the pair table across snapshots."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from policies.snapshot import CycleContext, Worker
from scheduler.router.cost import MIN_ROWS, SCALAR_MAX, FabricCostModel, FabricRows, PairTable
from scheduler.router.router import Router
from tests.scheduler.router.builders import (
    CROSS_ZONE,
    NVLINK_PEER,
    SAME_RAIL,
    SAME_RAIL_2,
    SOURCE,
    context,
    fabric,
    policy,
    snapshot,
    worker,
)
from topology.tiers import Tier


def _workers() -> list[Worker]:
    return [worker("p", "prefill", SOURCE, queued_tokens=3000, running_requests=2),
            worker("b", "both", gpus=(SAME_RAIL, "z0-p0-r1-h01/gpu1"), running_requests=300,
                   max_running_requests=256),
            worker("d", "decode", CROSS_ZONE, prefill_tokens_per_s=40_000.0),
            worker("n", "decode", gpus=(NVLINK_PEER, "z0-p0-r0-h00/gpu6", "z0-p0-r0-h00/gpu7"),
                   queued_tokens=100)]


def _context(cached: dict[str, int], tokens: int | None = None) -> CycleContext:
    return context(snapshot(_workers()), range(1, 9), cached, prompt_tokens=tokens)


def test_pair_costs_are_the_documented_formula() -> None:
    ctx = _context({"p": 8, "b": 3, "n": 5}, tokens=120)
    model = ctx.cost
    assert isinstance(model, FabricCostModel)
    snap, table, params = ctx.snapshot, model.table, model.params
    prefill, decode = np.array([0, 1], dtype=np.int64), np.array([1, 2, 3], dtype=np.int64)
    got = model.pair_costs(ctx, prefill, decode)
    rate = snap.prefill_rate[prefill]
    uncached = np.maximum(120 - ctx.cached * snap.block_tokens, 0)
    queue, compute = snap.queued[prefill] / rate, uncached[prefill] / rate
    nbytes = (uncached[decode] * snap.kv_bytes_per_token).astype(np.float64)
    tier, latency, bandwidth, lanes = table.figures(prefill, decode)
    seconds = latency + nbytes / (bandwidth * 1e9 * lanes)
    transfer = np.where(nbytes > 0, seconds, 0.0)
    transfer[1, 0] = 0.0  # "b" to itself moves nothing
    running = snap.running[decode].astype(np.float64)
    admission = (running * params.step_s_per_running
                 + np.maximum(running - snap.max_running[decode] + 1, 0)
                 * params.admission_step_s)
    assert np.array_equal(got.queue_s, queue) and np.array_equal(got.compute_s, compute)
    assert np.array_equal(got.transfer_s, transfer)
    assert np.array_equal(got.admission_s, admission)
    assert np.array_equal(got.total_s, (queue + compute)[:, None] + transfer + admission)
    assert np.array_equal(got.tier, tier)
    local = (snap.queued[decode] / snap.prefill_rate[decode]
             + uncached[decode] / snap.prefill_rate[decode] + admission)
    assert np.array_equal(model.local_costs(ctx, decode), local)


def test_each_request_gets_its_own_terms_from_a_shared_model() -> None:
    first, second = _context({"n": 8}), _context({"n": 2}, tokens=128)
    shared = first.cost
    other = CycleContext(second.request, first.snapshot, second.cached, shared)
    longer = CycleContext(replace(first.request, prompt_tokens=500), first.snapshot,
                          first.cached, shared)
    assert isinstance(shared, FabricCostModel)
    decode = np.array([3], dtype=np.int64)
    for ctx in (first, other, first, longer):
        fresh = FabricCostModel(shared.table, shared.params)
        alone = CycleContext(ctx.request, ctx.snapshot, ctx.cached, fresh)
        assert shared.local_costs(ctx, decode) == fresh.local_costs(alone, decode)
        assert shared.terms(ctx, 0, 3, local=False) == fresh.terms(alone, 0, 3, local=False)


def test_a_writable_cached_array_is_read_anew_on_every_call() -> None:
    ctx = _context({})
    cached = np.zeros(len(ctx.snapshot.workers), dtype=np.int64)
    live = CycleContext(ctx.request, ctx.snapshot, cached, ctx.cost)
    decode = np.array([3], dtype=np.int64)
    before = ctx.cost.local_costs(live, decode)
    cached[3] = 8
    assert ctx.cost.local_costs(live, decode) < before


def test_the_router_keeps_its_pair_table_while_the_workers_gpus_hold() -> None:
    router = Router(fabric(), policy())
    snap = snapshot(_workers())
    model = router.cost_model(snap)
    assert router.cost_model(snap) is model
    patched = snap.updated({0: replace(snap.workers[0], queued_tokens=1)})
    assert router.cost_model(patched) is model
    rebuilt = snapshot([replace(w, running_requests=9) for w in _workers()])
    assert router.cost_model(rebuilt) is model
    moved = _workers()
    moved[2] = replace(moved[2], gpus=(SAME_RAIL.replace("gpu0", "gpu3"),))
    other = router.cost_model(snapshot(moved))
    assert other is not model
    everyone = np.arange(len(moved), dtype=np.int64)
    for got, want in zip(other.table.figures(everyone, everyone),
                         PairTable(fabric(), moved).figures(everyone, everyone), strict=True):
        assert np.array_equal(got, want)
    assert router.cost_model(snap) is not other  # back to the first GPUs: rebuilt again


def test_pair_table_key_is_the_gpus_in_order() -> None:
    workers = _workers()
    assert PairTable.key(workers) == tuple(w.gpus for w in workers)


def _grid(table: PairTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    everyone = np.arange(len(table.gpu), dtype=np.int64)
    tier, latency, bandwidth, _ = table.figures(everyone, everyone)
    return tier, latency, bandwidth


def test_calibrated_tier_factors_scale_the_pair_figures_and_can_be_undone() -> None:
    router = Router(fabric(), policy())
    snap = snapshot(_workers())
    table = router.cost_model(snap).table
    tier, base_lat, base_bw = _grid(table)
    slow = Tier.from_label("cross_zone")
    assert router.set_tier_scales({"cross_zone": (2.0, 0.25)})
    assert not router.set_tier_scales({"cross_zone": (2.0, 0.25)})  # unchanged: no work
    _, lat, bw = _grid(table)
    hit = tier == int(slow)
    assert hit.any() and (~hit).any()
    assert np.allclose(lat[hit], base_lat[hit] * 2.0)
    assert np.allclose(bw[hit], base_bw[hit] * 0.25)
    assert np.array_equal(bw[~hit], base_bw[~hit])
    assert table.pair(0, 2)[2] == bw[0, 2]  # the scalar path agrees
    moved = _workers()
    moved[3] = replace(moved[3], gpus=(SAME_RAIL.replace("gpu0", "gpu3"),))
    fresh_tier, _, fresh_bw = _grid(router.cost_model(snapshot(moved)).table)  # a new table
    far = fresh_tier == int(slow)
    assert far.any()
    assert np.allclose(fresh_bw[far], _grid(PairTable(fabric(), moved))[2][far] * 0.25)
    assert router.set_tier_scales({})
    assert np.array_equal(_grid(router.cost_model(snap).table)[2], base_bw)


def test_pair_figures_need_memory_linear_in_workers_and_survive_row_eviction() -> None:
    distance = fabric()
    rows = FabricRows(distance, budget_bytes=0)  # the minimum: rows get evicted
    assert rows.capacity == MIN_ROWS < len(distance.names)
    workers = [worker(f"w{i}", gpu=name) for i, name in enumerate(distance.names)]
    table, alone = PairTable(distance, workers, rows), PairTable(distance, workers)
    everyone = np.arange(len(workers), dtype=np.int64)
    for start in range(0, len(workers), MIN_ROWS // 2):
        some = everyone[start:start + MIN_ROWS // 2]
        for got, want in zip(table.figures(some, everyone), alone.figures(some, everyone),
                             strict=True):
            assert np.array_equal(got, want)
    assert rows.tier.shape == (MIN_ROWS, len(distance.names))
    # more prefill candidates than rows at once: computed for the call, not kept
    for got, want in zip(table.figures(everyone, everyone), alone.figures(everyone, everyone),
                         strict=True):
        assert np.array_equal(got, want)
    tier, latency, bandwidth, lanes = alone.figures(everyone[5:6], everyone[77:78])
    assert table.pair(5, 77) == (int(tier[0, 0]), float(latency[0, 0]), float(bandwidth[0, 0]),
                                 int(np.broadcast_to(lanes, tier.shape)[0, 0]))


def test_a_spliced_snapshot_splices_the_routers_pair_table_equal_to_a_fresh_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    init = PairTable.__init__
    monkeypatch.setattr(PairTable, "__init__", lambda self, *args: (built.append(1),
                                                                     init(self, *args))[1])
    router = Router(fabric(), policy())
    router.set_tier_scales({"cross_zone": (2.0, 0.25)})
    snap = snapshot(_workers())
    model = router.cost_model(snap)
    everyone = np.arange(4, dtype=np.int64)
    model.table.figures(everyone, everyone)  # rows and offsets looked up: spliced as well
    joined = worker("j", "both", gpus=(CROSS_ZONE, "z1-p0-r0-h00/gpu1"))
    grown = snap.spliced(2, 0, (joined,), snapshot([joined]).domains)
    shrunk = grown.updated({}).spliced(0, 1, (), {k: v[:0] for k, v in snap.domains.items()})
    for spliced in (grown, shrunk):
        got, tables = router.cost_model(spliced), len(built)
        assert got is not model and tables == 1  # spliced, not built anew
        fresh = Router(fabric(), policy())
        fresh.set_tier_scales({"cross_zone": (2.0, 0.25)})
        want = fresh.cost_model(snapshot(spliced.workers)).table
        assert np.array_equal(got.table.gpu, want.gpu)
        positions = np.arange(len(spliced.workers), dtype=np.int64)
        for a, b in zip(got.table.figures(positions, positions),
                        want.figures(positions, positions), strict=True):
            assert np.array_equal(np.broadcast_to(a, np.shape(b)), b)
        built.pop()  # the fresh router's
        model = got
    lost = snap.spliced(0, 1, (), {k: v[:0] for k, v in snap.domains.items()})
    router.cost_model(lost)  # spliced from a worker set the router no longer holds
    assert len(built) == 2


def _random_context(rng: random.Random, workers: int) -> CycleContext:
    """Random loads (KV over-committed, idle, full), roles and cached prefixes."""
    roles = ("prefill", "decode", "both")
    gpus = [SOURCE, SAME_RAIL, CROSS_ZONE, NVLINK_PEER, SAME_RAIL_2]
    built = []
    for i in range(workers):
        capacity = rng.choice((0, 64, 4_000, 100_000))
        built.append(worker(
            f"w{i}", rng.choice(roles), gpus[i % len(gpus)],
            running_requests=rng.randrange(0, 400), queued_tokens=rng.randrange(0, 30_000),
            capacity_kv_blocks=capacity, free_kv_blocks=rng.randrange(0, capacity + 50),
            promised_kv_blocks=rng.choice((0, rng.randrange(0, 5_000))),
            context_tokens=rng.choice((0, rng.randrange(0, 3_000_000))),
            prefill_tokens_per_s=rng.choice((10_000.0, 40_000.0))))
    snap = snapshot(built)
    blocks = rng.randrange(1, 300)
    cached = {w.id: rng.randrange(0, blocks + 1) for w in built if rng.random() < 0.5}
    return context(snap, range(1, blocks + 1), cached,
                   prompt_tokens=blocks * 16 - rng.randrange(0, 16))


@pytest.mark.parametrize("seed", range(40))
def test_the_scalar_path_for_few_candidates_equals_the_vector_path(seed: int) -> None:
    """decode_costs and local_stall: one candidate at a time on Python floats (up to
    SCALAR_MAX candidates) and over numpy arrays give the same numbers, bit for bit;
    the scalar mean of the decode steps equals numpy's."""
    rng = random.Random(seed)
    ctx = _random_context(rng, rng.randrange(1, 8))
    model = ctx.cost
    assert isinstance(model, FabricCostModel)
    n = len(ctx.snapshot.workers)
    for _ in range(10):
        pos = np.array(rng.sample(range(n), rng.randrange(0, min(n, SCALAR_MAX) + 1)),
                       dtype=np.int64)
        assert model.decode_costs(ctx, pos).tolist() == \
            model._decode_costs_vector(ctx, pos).tolist()
        vector_stall = (np.where(ctx.snapshot.decode_mask[pos], ctx.snapshot.running[pos], 0)
                        * model._worker_terms(ctx).compute[pos] * model.params.stall_weight)
        assert model.local_stall(ctx, pos).tolist() == vector_stall.tolist()
    every = np.flatnonzero(ctx.snapshot.decode_mask)
    if 0 < len(every) <= SCALAR_MAX:
        assert model._mean_step(ctx.snapshot) == float(model._step(ctx.snapshot, every).mean())


def _shared_prefix_context(context_tokens: int) -> CycleContext:
    """Two decode workers with the same blocks in use and requests running; ``a``
    reports ``context_tokens`` read per step (its sequences share a long prefix)."""
    built = [worker("p", "prefill", SOURCE),
             worker("a", "decode", SAME_RAIL, running_requests=4, capacity_kv_blocks=1000,
                    free_kv_blocks=600, context_tokens=context_tokens),
             worker("b", "decode", SAME_RAIL_2, running_requests=4, capacity_kv_blocks=1000,
                    free_kv_blocks=600)]
    return context(snapshot(built), range(1, 9), {}, prompt_tokens=100)


def test_a_decode_step_reads_every_sequences_context_not_the_blocks_held() -> None:
    """Four sequences sharing a 300-block prefix hold 400 blocks (6,400 tokens at 16 a
    block) but read 4 x 5,000 tokens a step: the step, the decode price and the
    tail's mean are priced from what is read. Reported context below the blocks held
    (outputs reserved ahead) changes nothing."""
    ctx = _shared_prefix_context(20_000)
    model = ctx.cost
    assert isinstance(model, FabricCostModel)
    p = model.params
    decode = np.array([1, 2], dtype=np.int64)
    step = model._step(ctx.snapshot, decode)
    assert step[0] == pytest.approx(4 * p.decode_s_per_running + 20_000 * p.decode_s_per_kv_token)
    assert step[1] == pytest.approx(4 * p.decode_s_per_running + 6_400 * p.decode_s_per_kv_token)
    shared, plain = model.decode_costs(ctx, decode).tolist()
    assert shared > plain
    assert model._decode_costs_vector(ctx, decode).tolist() == [shared, plain]
    assert model._mean_step(ctx.snapshot) == pytest.approx(float(step.mean()))
    low = _shared_prefix_context(5_000)
    a, b = low.cost.decode_costs(low, decode).tolist()
    assert a == b


def test_the_snapshot_carries_the_context_tokens_through_updates() -> None:
    ctx = _shared_prefix_context(20_000)
    snap = ctx.snapshot
    assert snap.context.tolist() == [0, 20_000, 0]
    updated = snap.updated({2: replace(snap.workers[2], context_tokens=7)})
    assert updated.context.tolist() == [0, 20_000, 7]
