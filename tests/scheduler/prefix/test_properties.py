"""Property test: PrefixIndex agrees with a brute-force reference on random histories."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.prefix.events import AllBlocksCleared, BlockRemoved, BlockStored
from tests.scheduler.prefix.builders import FakeClock, index
from tests.scheduler.prefix.reference import GPU, HOST, ReferenceIndex

WORKERS = st.sampled_from(["a", "b", "c", "d"])
MODELS = st.sampled_from([None, None, "m"])
TIERS = st.sampled_from(["gpu", "gpu", "host"])
CHAIN = st.lists(st.integers(0, 7), min_size=1, max_size=6)
SEQ_STEP = st.sampled_from([1, 1, 1, 1, 0, -1, 2, 3])
#: How an event reaches the index: a validated model, or its JSON wire form (fast decoder).
VIA = st.sampled_from(["model", "json"])

OPERATIONS = st.one_of(
    st.tuples(st.just("store"), WORKERS, SEQ_STEP, CHAIN, TIERS, MODELS, VIA),
    st.tuples(st.just("remove"), WORKERS, SEQ_STEP, CHAIN, TIERS, MODELS, VIA),
    st.tuples(st.just("clear"), WORKERS, SEQ_STEP, VIA),
    st.tuples(st.just("predict"), WORKERS, CHAIN, st.sampled_from([0.5, 1.0, 3.0]), MODELS),
    st.tuples(st.just("tick"), st.sampled_from([0.25, 0.5, 1.0, 2.0])),
    st.tuples(st.just("touch"), WORKERS, CHAIN, MODELS),
    st.tuples(st.just("resync"), WORKERS, CHAIN, CHAIN, MODELS),
    st.tuples(st.just("remove_worker"), WORKERS),
    st.tuples(st.just("capacity"), WORKERS, st.sampled_from([None, 2, 4, 6])),
)


def _seq(ref: ReferenceIndex, worker: str, step: int) -> int:
    last = ref.workers[worker].last_seq if worker in ref.workers else None
    return max(0, (last if last is not None else 0) + step)


def _apply(op: tuple[Any, ...], idx: Any, ref: ReferenceIndex, clock: FakeClock) -> None:
    kind = op[0]
    tier_bits = {"gpu": GPU, "host": HOST}
    if kind in ("store", "remove", "clear"):
        worker, seq = op[1], _seq(ref, op[1], op[2])
        if kind == "store":
            event: Any = BlockStored(worker=worker, seq=seq, block_hashes=tuple(op[3]),
                                     tier=op[4], model=op[5])
        elif kind == "remove":
            event = BlockRemoved(worker=worker, seq=seq, block_hashes=tuple(op[3]),
                                 tier=op[4], model=op[5])
        else:
            event = AllBlocksCleared(worker=worker, seq=seq)
        resync = idx.apply(event.model_dump_json().encode() if op[-1] == "json" else event)
        applied, gap = ref.check_seq(worker, seq)
        assert (resync is not None) == gap
        if applied and kind == "store":
            ref.store(worker, op[3], tier_bits[op[4]], op[5])
            ref.enforce(worker)
        elif applied and kind == "remove":
            ref.remove(worker, op[3], tier_bits[op[4]], op[5])
        elif applied:
            ref.clear(worker, predictions=True)
    elif kind == "predict":
        idx.predict(op[1], op[2], ttl_s=op[3], model=op[4])
        ref.predict(op[1], op[2], clock.now + op[3], op[4])
    elif kind == "tick":
        clock.advance(op[1])
    elif kind == "touch":
        idx.touch(op[1], op[2], model=op[3])
        ref.touch(op[1], op[2], op[3])
    elif kind == "resync":
        idx.resync(op[1], op[2], op[3], seq=None, model=op[4])
        ref.resync(op[1], op[2], op[3], None, op[4])
    elif kind == "remove_worker":
        idx.remove_worker(op[1])
        ref.remove_worker(op[1])
    else:
        idx.set_capacity(op[1], op[2])
        ref.set_capacity(op[1], op[2])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(OPERATIONS, max_size=40),
    queries=st.lists(st.tuples(CHAIN, MODELS), min_size=1, max_size=4),
    max_entries=st.sampled_from([None, None, 5, 12]),
    worker_capacity=st.sampled_from([None, None, 3]),
)
def test_match_equals_brute_force(operations: list[tuple[Any, ...]],
                                  queries: list[tuple[list[int], str | None]],
                                  max_entries: int | None, worker_capacity: int | None) -> None:
    clock = FakeClock()
    idx = index(clock=clock, max_entries=max_entries, worker_capacity=worker_capacity)
    ref = ReferenceIndex(max_entries=max_entries, worker_capacity=worker_capacity)
    for op in operations:
        _apply(op, idx, ref, clock)
        chain, model = queries[len(ref.workers) % len(queries)]
        assert idx.match(chain, model=model) == ref.match(chain, clock.now, model)
    for chain, model in queries:
        assert idx.match(chain, model=model) == ref.match(chain, clock.now, model)
        subset = ["a", "c", "zz"]
        expected = ref.match(chain, clock.now, model)
        got = idx.match(chain, subset, model=model)
        assert set(got) == set(subset)
        assert all(got[w] == expected.get(w, got[w]) for w in subset)
    stats = idx.stats()
    assert stats.entries == ref.entries()
    assert stats.gpu_entries == sum(1 for w in ref.workers.values()
                                    for t in w.tiers.values() if t & GPU)
    assert stats.host_entries == sum(1 for w in ref.workers.values()
                                     for t in w.tiers.values() if t & HOST)
    assert set(idx.workers()) == set(ref.workers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stores=st.lists(st.tuples(st.integers(0, 299), st.lists(st.integers(0, 5), min_size=1,
                                                             max_size=5)), max_size=80),
    removals=st.lists(st.tuples(st.integers(0, 299), st.lists(st.integers(0, 5), min_size=1,
                                                               max_size=3)), max_size=20),
    capacity=st.sampled_from([None, 2]),
    queries=st.lists(CHAIN, min_size=1, max_size=4),
)
def test_wide_clusters_match_brute_force(stores: list[tuple[int, list[int]]],
                                         removals: list[tuple[int, list[int]]],
                                         capacity: int | None, queries: list[list[int]]) -> None:
    """300 workers: masks wider than a machine word, cached whole-cluster results."""
    idx = index(max_entries=None, worker_capacity=capacity)
    ref = ReferenceIndex(max_entries=None, worker_capacity=capacity)
    seqs: dict[str, int] = {}
    for w in range(300):  # every worker known, as in a cluster
        idx.set_capacity(f"w{w}", capacity)
        ref.set_capacity(f"w{w}", capacity)
    ops = [("store", *s) for s in stores] + [("remove", *r) for r in removals]
    for kind, w, chain in sorted(ops, key=lambda op: hash((op[1], tuple(op[2]))) % 97):
        name = f"w{w}"
        seqs[name] = seqs.get(name, -1) + 1
        cls = BlockStored if kind == "store" else BlockRemoved
        idx.apply(cls(worker=name, seq=seqs[name], block_hashes=tuple(chain)))
        ref.check_seq(name, seqs[name])
        if kind == "store":
            ref.store(name, chain, GPU, None)
            ref.enforce(name)
        else:
            ref.remove(name, chain, GPU, None)
        assert idx.match(queries[0]) == ref.match(queries[0], 0.0, None)
    for chain in queries:
        assert idx.match(chain) == ref.match(chain, 0.0, None)
