"""Predicted entries: TTL on an injected clock, confirmation by events, bounds."""

from __future__ import annotations

import pytest

from tests.scheduler.prefix.builders import FakeClock, cleared, index, removed, stored
from topology.errors import ValidationError


def test_prediction_counts_until_it_expires() -> None:
    clock = FakeClock()
    idx = index(clock=clock)
    assert idx.predict("a", [1, 2, 3], ttl_s=2.0) == 3
    info = idx.match([1, 2, 3, 4])["a"]
    assert (info.blocks, info.confirmed, info.predicted) == (3, 0, 3)
    clock.advance(1.999)
    assert idx.match([1, 2, 3])["a"].blocks == 3
    clock.advance(0.001)
    assert idx.match([1, 2, 3])["a"].blocks == 0
    assert idx.stats().predictions_expired == 3


def test_event_confirms_a_prediction() -> None:
    clock = FakeClock()
    idx = index(clock=clock)
    idx.predict("a", [1, 2, 3], ttl_s=1.0)
    idx.apply(stored(worker="a", hashes=(1, 2)))
    info = idx.match([1, 2, 3])["a"]
    assert (info.blocks, info.confirmed, info.predicted) == (3, 2, 1)
    clock.advance(5)
    info = idx.match([1, 2, 3])["a"]
    assert (info.blocks, info.confirmed) == (2, 2)
    stats = idx.stats()
    assert stats.predictions_confirmed == 2 and stats.predictions_expired == 1


def test_prediction_skips_blocks_already_held() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1, 2)))
    assert idx.predict("a", [1, 2, 3], ttl_s=1) == 1


def test_predicted_gap_is_bridged_but_confirmed_prefix_is_exact() -> None:
    idx = index()
    idx.apply(stored(worker="a", hashes=(1,)))
    idx.apply(stored(worker="a", seq=1, hashes=(3,)))
    idx.predict("a", [2], ttl_s=1)
    info = idx.match([1, 2, 3, 4])["a"]
    assert (info.blocks, info.confirmed, info.gpu) == (3, 1, 1)


def test_removal_and_clear_drop_predictions() -> None:
    idx = index()
    idx.predict("a", [1, 2], ttl_s=10)
    idx.apply(removed(worker="a", seq=0, hashes=(2,)))
    assert idx.match([1, 2])["a"].blocks == 1
    idx.apply(cleared(worker="a", seq=1))
    assert idx.match([1, 2])["a"].blocks == 0


def test_repredicting_extends_the_deadline() -> None:
    clock = FakeClock()
    idx = index(clock=clock)
    idx.predict("a", [1], ttl_s=1)
    clock.advance(0.5)
    idx.predict("a", [1], ttl_s=1)
    clock.advance(0.9)
    assert idx.match([1])["a"].blocks == 1
    clock.advance(0.2)
    assert idx.match([1])["a"].blocks == 0


def test_predictions_are_bounded_oldest_first() -> None:
    clock = FakeClock()
    idx = index(clock=clock, max_predicted=4)
    idx.predict("a", [1, 2, 3], ttl_s=1)
    idx.predict("b", [1, 2, 3], ttl_s=2)
    assert idx.stats().predicted_entries == 3
    assert idx.match([1, 2, 3])["a"].blocks == 0
    assert idx.match([1, 2, 3])["b"].blocks == 3
    assert idx.stats().predictions_evicted == 3


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="ttl_s"):
        index().predict("a", [1], ttl_s=0)


def test_prediction_and_model_namespace() -> None:
    idx = index()
    idx.predict("a", [1, 2], ttl_s=1, model="m")
    assert idx.match([1, 2])["a"].blocks == 0
    assert idx.match([1, 2], model="m")["a"].blocks == 2


def test_one_chain_matched_and_predicted_under_two_models_stays_apart() -> None:
    idx = index()
    chain = (1, 2, 3)  # the same tuple: the index reuses its salted keys per model only
    idx.match(chain, model="n")  # salts the tuple for "n" first
    idx.predict("a", chain, ttl_s=1, model="m")
    idx.predict("b", chain, ttl_s=1, model="n")
    assert idx.match(chain, model="m")["a"].blocks == 3
    assert idx.match(chain, model="m")["b"].blocks == 0
    assert idx.match(chain, model="n")["b"].blocks == 3
    assert idx.match(chain, model="n")["a"].blocks == 0
