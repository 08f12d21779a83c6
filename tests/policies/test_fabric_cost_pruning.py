"""fabric-cost's candidate pruning against its specification, written out in plain Python.

The handler selects with whole-array sorts and marks; the reference below sorts the
candidates one by one with the documented keys, so both must keep the same workers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.builtins.fabric_cost import (
    FabricCostHandler,
    FabricCostParams,
    _first_k,
    _top_k,
)
from policies.snapshot import CycleContext, Snapshot
from tests.scheduler.router.builders import context, fabric, snapshot, worker

PARAMS = FabricCostParams(top_k_prefill=3, top_k_decode=4, exhaustive_below=4)
Key = Callable[[int], tuple[float, float, int]]

_KEYS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(keys=_KEYS, k=st.integers(1, 12))
def test_one_sort_selects_what_the_partial_selection_selects(
        keys: list[tuple[int, int]], k: int) -> None:
    primary = np.array([p for p, _ in keys], dtype=np.float64)
    secondary = np.array([s for _, s in keys], dtype=np.float64)
    assert set(_first_k(-primary, -secondary, k).tolist()) == set(
        _top_k(primary, secondary, k).tolist())


@settings(max_examples=200, deadline=None)
@given(keys=_KEYS, k=st.integers(1, 12), subset=st.lists(st.booleans(), min_size=40,
                                                         max_size=40))
def test_a_subsets_best_come_first_in_the_whole_order(
        keys: list[tuple[int, int]], k: int, subset: list[bool]) -> None:
    first = np.array([p for p, _ in keys], dtype=np.float64)
    then = np.array([s for _, s in keys], dtype=np.float64)
    inside = np.array(subset[: len(keys)])
    members = np.flatnonzero(inside)
    order = np.lexsort((then, first))
    from_whole = order[inside[order]][:k]
    alone = members[_first_k(first[members], then[members], k)]
    assert set(from_whole.tolist()) == set(alone.tolist())


def _best(candidates: Iterable[int], key: Key, k: int) -> set[int]:
    return set(sorted(candidates, key=key)[:k])


def _near(snap: Snapshot, level: str, p_pos: Iterable[int], pos: Iterable[int]) -> set[int]:
    ids = snap.domains[level]
    shared = {int(ids[p]) for p in p_pos if ids[p] >= 0}
    return {d for d in pos if ids[d] >= 0 and int(ids[d]) in shared}


def _reference_prefill(ctx: CycleContext, pos: list[int]) -> list[int]:
    snap, k = ctx.snapshot, PARAMS.top_k_prefill
    if len(pos) <= PARAMS.exhaustive_below:
        return pos
    wait = {p: snap.queued[p] / snap.prefill_rate[p] for p in pos}
    cached = {p: int(ctx.cached[p]) for p in pos}
    kept = (_best(pos, lambda p: (-cached[p], wait[p], p), k)
            | _best(pos, lambda p: (wait[p], -cached[p], p), k))
    if ctx.session_pair is not None and ctx.session_pair[0] in snap.position:
        kept.add(snap.position[ctx.session_pair[0]])
    return sorted(kept)


def _reference_decode(ctx: CycleContext, p_pos: list[int], pos: list[int]) -> list[int]:
    snap, k = ctx.snapshot, PARAMS.top_k_decode
    if len(pos) <= PARAMS.exhaustive_below:
        return pos

    def by_cache(d: int) -> tuple[float, float, int]:
        return -int(ctx.cached[d]), int(snap.running[d]), d

    def by_load(d: int) -> tuple[float, float, int]:
        return int(snap.running[d]), -int(ctx.cached[d]), d

    rack = sorted(_near(snap, "rack", p_pos, pos))
    kept = (_near(snap, "host", p_pos, pos) | _near(snap, "nvlink_domain", p_pos, pos)
            | _best(rack, by_cache, k) | _best(rack, by_load, k)
            | _best(pos, by_cache, k) | _best(pos, by_load, k))
    partners = {snap.position[d] for p in p_pos
                for d, _ in snap.partners.get(snap.workers[p].id, ())}
    kept |= partners & set(pos)
    if ctx.session_pair is not None and ctx.session_pair[1] in snap.position:
        kept.add(snap.position[ctx.session_pair[1]])
    return sorted(kept)


def _random_context(seed: int) -> CycleContext:
    rng = random.Random(seed)
    names = fabric().names
    n = rng.randrange(8, 64)
    gpus = rng.sample(range(len(names)), n)
    workers = [worker(f"w{i}", rng.choice(["prefill", "decode", "both"]), names[g],
                      queued_tokens=rng.choice([0, 1000, 5000]),
                      running_requests=rng.randrange(3))
               for i, g in enumerate(gpus)]
    pairs = {(a.id, b.id): 1.0 for a in workers for b in workers if rng.random() < 0.03}
    session = (rng.choice(workers).id, rng.choice(workers).id) if rng.random() < 0.5 else None
    ctx = context(snapshot(workers, preferred_pairs=pairs), range(1, 5),
                  {w.id: rng.randrange(4) for w in workers})
    return CycleContext(ctx.request, ctx.snapshot, ctx.cached, ctx.cost,
                        session_pair=session)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_pruned_candidates_are_the_specified_ones(seed: int) -> None:
    ctx = _random_context(seed)
    handler = FabricCostHandler("h", PARAMS)
    snap = ctx.snapshot
    p_all = np.flatnonzero(snap.prefill_mask).astype(np.int64)
    d_all = np.flatnonzero(snap.decode_mask).astype(np.int64)
    p_pos = handler._prune_prefill(ctx, p_all)
    assert p_pos.tolist() == _reference_prefill(ctx, p_all.tolist())
    assert handler._prune_decode(ctx, p_pos, d_all).tolist() == _reference_decode(
        ctx, p_pos.tolist(), d_all.tolist())


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_idle_prefill_workers_with_a_zero_rate_prune_as_the_partial_selection_does() -> None:
    """0 queued tokens / 0 tokens/s is NaN: a sort would place those workers last, the
    partial selection lets them fill the k slots by load and then keeps none of them."""
    names = fabric().names
    workers = [worker(f"w{i}", "prefill", names[i], queued_tokens=0 if i % 4 == 0 else 100 * i,
                      prefill_tokens_per_s=0.0 if i % 4 == 0 else 20_000.0)
               for i in range(12)]
    ctx = context(snapshot(workers), range(1, 5), {f"w{i}": i % 2 for i in range(12)})
    pos = np.arange(12, dtype=np.int64)
    wait = ctx.snapshot.queued / ctx.snapshot.prefill_rate
    cached = ctx.cached.astype(np.float64)
    expected = np.union1d(_top_k(cached, -wait, 3), _top_k(-wait, cached, 3))
    kept = FabricCostHandler("h", PARAMS)._prune_prefill(ctx, pos)
    assert kept.tolist() == expected.tolist() == [1, 3, 5]
    by_sort = np.union1d(_first_k(-cached, wait, 3), _first_k(wait, -cached, 3))
    assert by_sort.tolist() == [1, 2, 3, 5]
