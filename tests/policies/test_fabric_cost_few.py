"""fabric-cost on Python numbers for a few candidates (``_schedule_few``, ``filter_few``)
decides exactly as its numpy path: same pair, runners-up, scores, TTFT estimates and
notes, bit for bit, on random snapshots (loads, KV over-commit, zero rates, pairings,
sessions, link load, pinned workers, prefix pulls on and off)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest

import scheduler.router.cost as cost_module
from policies.builtins.fabric_cost import FabricCostHandler
from policies.contracts import PairChoice, Refusal
from policies.pipeline import SchedulingProfile
from policies.snapshot import CycleContext, RequestView
from scheduler.router.cost import SCALAR_MAX, CostParams
from scheduler.router.router import Router
from tests.scheduler.router.builders import (
    CROSS_ZONE,
    NVLINK_PEER,
    SAME_RAIL,
    SAME_RAIL_2,
    SOURCE,
    fabric,
    policy,
    snapshot,
    worker,
)

GPUS = (SOURCE, SAME_RAIL, CROSS_ZONE, NVLINK_PEER, SAME_RAIL_2)


def _random_context(rng: random.Random) -> CycleContext:
    """Up to SCALAR_MAX workers a role, with random loads, cache, pairings, session and
    link load; a prefill rate of zero now and then (0 / 0 in the terms)."""
    built = []
    for i in range(rng.randrange(1, 2 * SCALAR_MAX + 1)):
        capacity = rng.choice((0, 64, 4_000, 100_000))
        built.append(worker(
            f"w{i}", rng.choice(("prefill", "decode", "both")), GPUS[i % len(GPUS)],
            gpus=GPUS[i % len(GPUS):i % len(GPUS) + rng.choice((1, 1, 2))],
            running_requests=rng.randrange(0, 400), queued_tokens=rng.choice((0, 20_000)),
            max_running_requests=rng.choice((4, 256)),
            capacity_kv_blocks=capacity, free_kv_blocks=rng.randrange(0, capacity + 50),
            promised_kv_blocks=rng.choice((0, rng.randrange(0, 5_000))),
            prefill_tokens_per_s=rng.choice((0.0, 10_000.0, 40_000.0, 40_000.0))))
    names = [w.id for w in built]
    pairs = {(rng.choice(names), rng.choice(names)): rng.choice((0.5, 1.0, 2.0))
             for _ in range(rng.randrange(0, 4))}
    snap = snapshot(built, preferred_pairs=pairs)
    params = CostParams(prefix_pull=rng.random() < 0.3)  # pulls: priced on arrays only
    model = Router(fabric(), policy(), cost=params).cost_model(snap)
    if rng.random() < 0.4:
        a, b = rng.randrange(len(built)), rng.randrange(len(built))
        links = model.table.links(a, b)
        if links:
            snap = snap.with_link_load({link: rng.randrange(1, 5) for link in links})
            model = Router(fabric(), policy(), cost=params).cost_model(snap)
    blocks = rng.randrange(1, 300)
    cached = np.array([rng.choice((0, 0, rng.randrange(0, blocks + 1))) for _ in built],
                      dtype=np.int64)
    cached.flags.writeable = False
    session = (rng.choice([*names, "gone"]), rng.choice(names)) if rng.random() < 0.4 else None
    pins = [rng.choice([None, None, None, "gone", *names]) for _ in range(2)]
    view = RequestView("r", tuple(range(1, blocks + 1)), blocks * 16 - rng.randrange(0, 16),
                       prefill_worker=pins[0], decode_worker=pins[1])
    return CycleContext(view, snap, cached, model, 0, 0, session)


def _decide(ctx: CycleContext, few_max: int,
            monkeypatch: pytest.MonkeyPatch) -> PairChoice | Refusal:
    monkeypatch.setattr(cost_module, "SCALAR_MAX", few_max)
    handler = policy().handler
    assert isinstance(handler, FabricCostHandler)
    with np.errstate(all="ignore"):
        return handler.schedule(ctx, policy().profiles)


def _contexts(seed: int) -> Iterator[CycleContext]:
    rng = random.Random(seed)
    for _ in range(25):
        yield _random_context(rng)


@pytest.mark.parametrize("seed", range(20))
def test_the_few_candidate_path_decides_as_the_array_path(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for ctx in _contexts(seed):
        few = _decide(ctx, 64, monkeypatch)  # every side here is small: Python floats
        array = _decide(ctx, 0, monkeypatch)  # numpy everywhere
        assert repr(few) == repr(array)  # repr: NaN compares equal to itself


def test_the_few_candidate_path_is_taken_for_small_sides_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Wire check: with the default SCALAR_MAX the handler filters and prices a small
    snapshot on Python numbers and not one with more candidates on a side than that."""
    entered: list[int] = []
    original = FabricCostHandler._schedule_few

    def spy(self: FabricCostHandler, ctx: CycleContext, *args: object) -> object:
        entered.append(len(ctx.snapshot.workers))
        return original(self, ctx, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(FabricCostHandler, "_schedule_few", spy)
    filtered: list[int] = []  # snapshots whose sides were filtered on Python ints
    few_filter = SchedulingProfile.filter_few

    def filter_spy(self: SchedulingProfile, ctx: CycleContext,
                   positions: list[int]) -> list[int] | None:
        filtered.append(len(ctx.snapshot.workers))
        return few_filter(self, ctx, positions)

    monkeypatch.setattr(SchedulingProfile, "filter_few", filter_spy)
    for n in (2, 2 * (SCALAR_MAX + 1)):
        built = [worker(f"w{i}", "prefill" if i % 2 else "decode", GPUS[i % len(GPUS)])
                 for i in range(n)]
        snap = snapshot(built)
        router = Router(fabric(), policy())
        decision = router.route({"block_hashes": [1, 2, 3]}, snap)
        assert decision.status == "scheduled"
    assert entered == [2]
    assert filtered == [2, 2]  # both sides of the small snapshot
