"""The baselines behave like the routers they stand for; the pipeline clamps and weighs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from policies.contracts import ScoredWorker
from policies.pipeline import SchedulingProfile, WeightedScorer
from policies.registry import default_registry
from policies.snapshot import CycleContext, Snapshot, Stage, Worker
from scheduler.router.router import Decision
from tests.scheduler.router.builders import (
    CROSS_ZONE,
    NVLINK_PEER,
    SAME_RAIL,
    SAME_RAIL_2,
    SOURCE,
    chain,
    context,
    router,
    snapshot,
    worker,
)


def _create(type_name: str, **params: object) -> object:
    plugin, issues = default_registry().create(type_name, params)
    assert not issues
    return plugin


def _ranked(workers: Sequence[Worker]) -> list[ScoredWorker]:
    return [ScoredWorker(w, 1.0) for w in workers]


def _decide(name: str, workers: list[Worker], cached: dict[str, list[int]] | None = None,
            blocks: int = 4, **request: object) -> Decision:
    result = router(name, cached=cached).route({"block_hashes": chain(blocks), **request},
                                               snapshot(workers))
    assert isinstance(result, Decision), result
    return result


def test_label_curve_picks_the_prefill_worker_next_to_the_decode_worker() -> None:
    workers = [worker("p-far", "prefill", CROSS_ZONE), worker("p-host", "prefill", NVLINK_PEER),
               worker("d", "decode", SOURCE)]
    decision = _decide("label-curve", workers, blocks=64)
    assert (decision.prefill.worker, decision.decode.worker) == ("p-host", "d")
    assert decision.estimate.tier == "nvlink"


def test_label_curve_decode_missing_few_tokens_prefills_locally() -> None:
    workers = [worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)]
    decision = _decide("label-curve", workers, cached={"d": chain(60)}, blocks=64)
    assert decision.mode == "local-prefill"


def test_label_curve_cannot_tell_a_rail_from_a_spine() -> None:
    # One decode worker is a rail-leaf hop away, the other across the zone spine; both
    # only share the zone label with the peer, so the curve scores them alike.
    scorer = _create("label-curve-scorer")
    snap = snapshot([worker("p", "prefill", SOURCE), worker("a", "decode", SAME_RAIL),
                     worker("b", "decode", "z0-p1-r0-h00/gpu0")])
    ctx = context(snap).for_stage(Stage.DECODE, snap.workers[0])
    assert scorer.score(ctx, snap.workers[1:]) == {"a": 0.05, "b": 0.05}  # type: ignore[attr-defined]


def test_label_curve_values() -> None:
    scorer = _create("label-curve-scorer")
    snap = snapshot([worker("peer", "prefill", SOURCE), worker("host", "decode", NVLINK_PEER),
                     worker("rack", "decode", "z0-p0-r0-h01/gpu0"),
                     worker("zone", "decode", "z0-p1-r0-h00/gpu0"),
                     worker("region", "decode", CROSS_ZONE)])
    ctx = context(snap).for_stage(Stage.PREFILL, snap.workers[0])
    scores = scorer.score(ctx, snap.workers[1:])  # type: ignore[attr-defined]
    assert scores["host"] == 1.0 and scores["rack"] == 0.2 and scores["zone"] == 0.05
    assert scores["region"] in (0.02, 0.0)  # the small fabric may put zones in one region


def test_single_domain_keeps_decode_in_the_prefill_zone() -> None:
    workers = [worker("p", "prefill", SOURCE), worker("d-far", "decode", CROSS_ZONE),
               worker("d-zone", "decode", "z0-p1-r0-h00/gpu0")]
    assert _decide("single-domain", workers).decode.worker == "d-zone"


def test_single_domain_prefers_the_prefill_rack() -> None:
    workers = [worker("p", "prefill", SOURCE), worker("d-zone", "decode", "z0-p1-r0-h00/gpu0"),
               worker("d-rack", "decode", "z0-p0-r0-h01/gpu2")]
    assert _decide("single-domain", workers).decode.worker == "d-rack"


def test_kv_router_cost_prefers_cached_and_idle_workers() -> None:
    scorer = _create("kv-router-scorer", overlap_weight=1.0)
    snap = snapshot([worker("cold", "prefill", SOURCE),
                     worker("warm", "prefill", SAME_RAIL),
                     worker("busy", "prefill", SAME_RAIL_2, free_kv_blocks=99_990)])
    ctx = context(snap, chain(10), {"warm": 6, "busy": 10})
    # costs: cold 10 + 0, warm 4 + 0, busy 0 + 10 in use → scores 1 - cost / 10
    assert scorer.score(ctx, snap.workers) == pytest.approx(  # type: ignore[attr-defined]
        {"cold": 0.0, "warm": 0.6, "busy": 0.0})


def _cache_aware(ctx: CycleContext) -> str:
    picker = _create("cache-aware-picker", cache_threshold=0.5, balance_abs_threshold=4,
                     balance_rel_threshold=1.5)
    picked = picker.pick(ctx, _ranked(ctx.snapshot.workers))  # type: ignore[attr-defined]
    return str(picked.worker.id)


def test_cache_aware_balances_first_then_follows_the_cache_then_free_space() -> None:
    def snap(load_b: int) -> Snapshot:
        return snapshot([worker("a", "prefill", SOURCE, running_requests=0,
                                cached_kv_blocks=500),
                         worker("b", "prefill", SAME_RAIL, running_requests=load_b,
                                cached_kv_blocks=900),
                         worker("c", "prefill", SAME_RAIL_2, cached_kv_blocks=40)])
    assert _cache_aware(context(snap(20), chain(4), {"b": 4})) == "a"    # imbalanced
    assert _cache_aware(context(snap(2), chain(4), {"b": 4})) == "b"     # cache hit 100 %
    assert _cache_aware(context(snap(2), chain(4), {"b": 2})) == "c"     # 50 %: smallest


def test_round_robin_cycles_through_candidates() -> None:
    picker = _create("round-robin-picker")
    snap = snapshot([worker(w, "decode", SAME_RAIL) for w in ("c", "a", "b")])
    picks = [picker.pick(context(snap, sequence=i), _ranked(snap.workers))  # type: ignore[attr-defined]
             .worker.id for i in range(4)]
    assert picks == ["a", "b", "c", "a"]


def test_random_is_repeatable_under_a_seed_and_varies_across_seeds() -> None:
    picker = _create("random-picker")
    snap = snapshot([worker(f"w{i}", "decode", SAME_RAIL) for i in range(8)])
    ranked = _ranked(snap.workers)
    draws = {picker.pick(context(snap, seed=s), ranked).worker.id  # type: ignore[attr-defined]
             for s in range(20)}
    assert len(draws) > 1
    one = picker.pick(context(snap, seed=3), ranked)  # type: ignore[attr-defined]
    assert one == picker.pick(context(snap, seed=3), ranked)  # type: ignore[attr-defined]


def test_least_loaded_uses_the_load_of_each_side() -> None:
    workers = [worker("p-busy", "prefill", SOURCE, queued_tokens=9000),
               worker("p-idle", "prefill", NVLINK_PEER, queued_tokens=10),
               worker("d-busy", "decode", SAME_RAIL, running_requests=50),
               worker("d-idle", "decode", SAME_RAIL_2, running_requests=3)]
    decision = _decide("least-loaded", workers)
    assert (decision.prefill.worker, decision.decode.worker) == ("p-idle", "d-idle")


class _Wild:
    """A misbehaving scorer: out-of-range scores must be clamped by the pipeline."""

    name = "wild"

    def score(self, ctx: CycleContext, candidates: Sequence[Worker]) -> Mapping[str, float]:
        return {"a": 7.0, "b": -3.0, "c": float("nan")}


def test_pipeline_clamps_scores_and_weighs_them() -> None:
    picker = _create("max-score-picker")
    load = _create("load-scorer")
    profile = SchedulingProfile("p", (), (WeightedScorer(_Wild(), 3.0),
                                          WeightedScorer(load, 1.0)), picker)  # type: ignore[arg-type]
    snap = snapshot([worker("a", "prefill", SOURCE, queued_tokens=100),
                     worker("b", "prefill", SAME_RAIL), worker("c", "prefill", SAME_RAIL_2)])
    outcome = profile.run(context(snap).for_stage(Stage.PREFILL), snap.workers)
    scores = {s.worker.id: s.score for s in outcome.ranked}
    assert scores == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.25})
    assert outcome.ranked[0].parts == {"wild": 1.0, "load-scorer": 0.0}
    assert outcome.picked is not None and outcome.picked.worker.id == "a"
