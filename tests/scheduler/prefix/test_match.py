"""Matching: longest prefix per worker, worker subsets, tiers, models, remove_worker."""

from __future__ import annotations

import pytest

from scheduler.prefix.models import MatchInfo
from tests.scheduler.prefix.builders import index, lengths, removed, stored


def test_longest_prefix_per_worker() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2, 3, 4)))
    idx.apply(stored(worker="b", hashes=(1, 2)))
    idx.apply(stored(worker="c", hashes=(1, 9)))
    idx.apply(stored(worker="d", hashes=(7, 8)))
    assert lengths(idx.match([1, 2, 3, 5])) == {"a": 3, "b": 2, "c": 1}
    assert idx.match([1, 2, 3, 5])["d"] == MatchInfo()


def test_hole_in_the_chain_ends_the_prefix() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2, 3, 4)))
    idx.apply(removed(worker="a", seq=1, hashes=(2,)))
    assert idx.match([1, 2, 3, 4])["a"].blocks == 1


def test_every_worker_is_reported_and_subsets_are_respected() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2)))
    idx.apply(stored(worker="b", hashes=(1,)))
    assert set(idx.match([1, 2])) == {"a", "b"}
    subset = idx.match([1, 2], workers=["b", "ghost"])
    assert set(subset) == {"b", "ghost"}
    assert subset["b"].blocks == 1 and subset["ghost"].blocks == 0


def test_empty_chain_and_empty_index() -> None:
    assert index().match([1, 2]) == {}
    idx = index()
    idx.apply(stored(worker="a"))
    assert idx.match([]) == {"a": MatchInfo()}


def test_tiers_are_counted_with_gpu_preferred() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2), tier="gpu"))
    idx.apply(stored(worker="a", seq=1, hashes=(2, 3, 4), tier="host"))
    info = idx.match([1, 2, 3, 4, 5])["a"]
    assert (info.blocks, info.confirmed, info.gpu, info.host) == (4, 4, 2, 2)
    assert idx.stats().gpu_entries == 2 and idx.stats().host_entries == 3


def test_removing_one_tier_keeps_the_other() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2), tier="gpu"))
    idx.apply(stored(worker="a", seq=1, hashes=(1, 2), tier="host"))
    idx.apply(removed(worker="a", seq=2, hashes=(1, 2), tier="gpu"))
    info = idx.match([1, 2])["a"]
    assert (info.blocks, info.gpu, info.host) == (2, 0, 2)
    idx.apply(removed(worker="a", seq=3, hashes=(1,), tier="host"))
    assert idx.match([1, 2])["a"].blocks == 0
    assert idx.stats().entries == 1


def test_removal_of_unknown_blocks_is_harmless() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1,)))
    idx.apply(removed(worker="a", seq=1, hashes=(5, 6), tier="host"))
    assert idx.match([1])["a"].blocks == 1


def test_models_never_match_each_other() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2), model="llama"))
    idx.apply(stored(worker="b", hashes=(1, 2), model="qwen"))
    idx.apply(stored(worker="c", hashes=(1, 2)))
    assert lengths(idx.match([1, 2], model="llama")) == {"a": 2}
    assert lengths(idx.match([1, 2], model="qwen")) == {"b": 2}
    assert lengths(idx.match([1, 2])) == {"c": 2}
    idx.apply(removed(worker="a", seq=1, hashes=(2,), model="llama"))
    assert lengths(idx.match([1, 2], model="llama")) == {"a": 1}


def test_remove_worker_drops_everything_and_frees_its_slot() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2)))
    idx.apply(stored(worker="b", hashes=(1, 2)))
    idx.predict("a", [1, 2, 3], ttl_s=5)
    assert idx.remove_worker("a") is True
    assert idx.remove_worker("a") is False
    assert set(idx.match([1, 2, 3])) == {"b"}
    assert idx.stats().entries == 2 and idx.stats().predicted_entries == 0
    idx.apply(stored(worker="c", hashes=(1,)))  # reuses a's slot: no stale bits
    assert lengths(idx.match([1, 2])) == {"b": 2, "c": 1}
    assert idx.workers() == ("b", "c")


def test_match_result_is_immutable_and_independent() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1,)))
    first = idx.match([1])
    first["a"] = MatchInfo(99)
    assert idx.match([1])["a"].blocks == 1
    with pytest.raises(AttributeError):
        idx.match([1])["a"].blocks = 3  # type: ignore[misc]


def test_many_workers_share_block_zero() -> None:
    idx = index()
    for w in range(300):
        idx.apply(stored(worker=f"w{w}", hashes=(0, 1000 + w, 2000 + w)))
    result = idx.match([0, 1007, 2007, 5])
    assert result["w7"].blocks == 3
    assert sum(info.blocks == 1 for info in result.values()) == 299
    assert len(result) == 300


def test_snapshot_is_plain_immutable_data() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2)))
    idx.apply(stored(worker="a", seq=1, hashes=(3,), tier="host"))
    idx.predict("a", [1, 2, 3, 4], ttl_s=1)
    snap = idx.snapshot()
    (worker,) = snap.workers
    assert worker.gpu == frozenset({1, 2}) and worker.host == frozenset({3})
    assert worker.predicted == frozenset({4}) and worker.last_seq == 1
    restored = index()
    restored.resync("a", worker.gpu, worker.host)
    assert restored.match([1, 2, 3])["a"].confirmed == 3
