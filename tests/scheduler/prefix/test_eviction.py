"""Bounded memory: global LRU bound, per-worker capacity, touch, long streams."""

from __future__ import annotations

import random

import pytest

from tests.scheduler.prefix.builders import index, lengths, stored
from topology.errors import ValidationError


def test_worker_capacity_drops_least_recently_used_chain_ends_first() -> None:
    idx = index(worker_capacity=4)
    idx.apply(stored(worker="a", seq=0, hashes=(1, 2, 3)))
    idx.apply(stored(worker="a", seq=1, hashes=(10, 11)))
    # Capacity 4: the oldest entry is the *end* of the first chain (stamped leaf first).
    assert lengths(idx.match([1, 2, 3])) == {"a": 2}
    assert idx.match([10, 11])["a"].blocks == 2
    assert idx.stats().evicted_capacity == 1


def test_touch_protects_blocks_in_use() -> None:
    idx = index(worker_capacity=4)
    idx.apply(stored(worker="a", seq=0, hashes=(1, 2)))
    idx.apply(stored(worker="a", seq=1, hashes=(5, 6)))
    assert idx.touch("a", [1, 2, 99]) == 2
    idx.apply(stored(worker="a", seq=2, hashes=(7, 8)))
    assert idx.match([1, 2])["a"].blocks == 2
    assert idx.match([5, 6])["a"].blocks == 0
    assert idx.touch("ghost", [1]) == 0


def test_set_capacity_applies_at_once_and_per_worker() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2, 3, 4)))
    idx.apply(stored(worker="b", hashes=(1, 2, 3, 4)))
    idx.set_capacity("a", 2)
    assert lengths(idx.match([1, 2, 3, 4])) == {"a": 2, "b": 4}
    with pytest.raises(ValidationError):
        idx.set_capacity("a", 0)


def test_capacity_survives_worker_removal_and_return() -> None:
    idx = index()
    idx.set_capacity("a", 1)
    idx.remove_worker("a")
    idx.apply(stored(worker="a", hashes=(1, 2)))
    assert idx.match([1, 2])["a"].blocks == 1
    assert idx.snapshot().workers[0].capacity == 1


def test_global_bound_evicts_globally_least_recently_used() -> None:
    idx = index(max_entries=5)
    idx.apply(stored(worker="a", hashes=(1, 2, 3)))
    idx.apply(stored(worker="b", hashes=(1, 2)))
    idx.touch("a", [1, 2, 3])  # a's blocks are now newer than b's
    idx.apply(stored(worker="c", hashes=(9,)))
    stats = idx.stats()
    assert stats.entries == 5 and stats.evicted_global == 1
    assert lengths(idx.match([1, 2, 3])) == {"a": 3, "b": 1}


def test_bad_bounds_are_rejected() -> None:
    with pytest.raises(ValidationError, match="max_entries"):
        index(max_entries=0)
    with pytest.raises(ValidationError, match="worker_capacity"):
        index(worker_capacity=-3)


def test_memory_stays_bounded_under_a_long_stream() -> None:
    rnd = random.Random(3)
    idx = index(max_entries=500, worker_capacity=120)
    seqs = dict.fromkeys(range(8), 0)
    for step in range(3000):
        w = rnd.randrange(8)
        root = rnd.randrange(50)
        chain = tuple(root * 1000 + i for i in range(rnd.randrange(1, 12)))
        idx.apply(stored(worker=f"w{w}", seq=seqs[w], hashes=chain))
        seqs[w] += 1
        if step % 7 == 0:
            idx.predict(f"w{rnd.randrange(8)}", [rnd.randrange(10**6) for _ in range(5)],
                        ttl_s=1e9)
        stats = idx.stats()
        assert stats.entries <= 500
        assert stats.predicted_entries <= 10_000
    snapshot = idx.snapshot()
    assert all(len(w.gpu) <= 120 for w in snapshot.workers)
    assert sum(len(w.gpu) for w in snapshot.workers) == idx.stats().entries
    assert idx.stats().evicted_global > 0


def test_touch_stamps_the_chain_leaf_first() -> None:
    idx = index(worker_capacity=3)
    idx.apply(stored(worker="a", seq=0, hashes=(1, 2, 3)))
    idx.touch("a", [1, 2, 3])
    idx.apply(stored(worker="a", seq=1, hashes=(9,)))
    # The chain's end goes first, its shared beginning stays usable.
    assert idx.match([1, 2, 3])["a"].blocks == 2
