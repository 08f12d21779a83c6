"""KV events: validation with paths, sequence gaps, replays, clears and resync."""

from __future__ import annotations

import json

import pytest

from scheduler.prefix.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    ResyncRequest,
    parse_event,
)
from tests.scheduler.prefix.builders import cleared, index, lengths, removed, stored
from topology.errors import InputError, ParseError, ValidationError


def test_parse_event_from_json_bytes() -> None:
    raw = json.dumps({"kind": "block_stored", "worker": "prefill-3", "seq": 12,
                      "block_hashes": [11, 12], "parent_hash": 10, "tier": "host",
                      "model": "llama-3-70b"}).encode()
    event = parse_event(raw)
    assert isinstance(event, BlockStored)
    assert event.block_hashes == (11, 12) and event.parent_hash == 10 and event.tier == "host"


def test_parse_every_kind() -> None:
    assert isinstance(parse_event({"kind": "block_removed", "worker": "w", "seq": 1,
                                   "block_hashes": [5]}), BlockRemoved)
    assert isinstance(parse_event('{"kind": "all_blocks_cleared", "worker": "w", "seq": 2}'),
                      AllBlocksCleared)


def test_malformed_event_names_every_bad_field_path() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event({"kind": "block_stored", "worker": "w", "seq": -1,
                     "block_hashes": [1, 2**64, "x"], "tier": "disk"}, source="sidecar w")
    paths = {issue.path for issue in caught.value.issues}
    assert {"seq", "block_hashes[1]", "block_hashes[2]", "tier"} <= paths
    assert caught.value.source == "sidecar w"
    assert isinstance(caught.value, InputError)


def test_unknown_kind_and_missing_fields_are_reported() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_event({"kind": "block_moved", "worker": "w", "seq": 1})
    assert caught.value.issues[0].path == "kind"
    with pytest.raises(ValidationError) as caught:
        parse_event({"kind": "block_removed", "seq": 1})
    assert {i.path for i in caught.value.issues} == {"worker", "block_hashes"}


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError, match="colour"):
        parse_event({"kind": "all_blocks_cleared", "worker": "w", "seq": 1, "colour": 1})


def test_not_json_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="not JSON"):
        parse_event(b"{kind: oops")
    with pytest.raises(ParseError, match="JSON object"):
        parse_event("[1, 2]")


def test_apply_validates_mappings() -> None:
    idx = index()
    with pytest.raises(ValidationError) as caught:
        idx.apply({"kind": "block_stored", "worker": "w", "seq": 0, "block_hashes": []})
    assert caught.value.issues[0].path == "block_hashes"
    assert idx.apply({"kind": "block_stored", "worker": "w", "seq": 0,
                      "block_hashes": [1]}) is None
    assert lengths(idx.match([1])) == {"w": 1}


def test_gap_applies_the_event_and_asks_for_resync() -> None:
    idx = index()
    assert idx.apply(stored(seq=0, hashes=(1, 2))) is None
    request = idx.apply(stored(seq=5, hashes=(3,), parent=2))
    assert request == ResyncRequest(worker="w0", expected_seq=1, got_seq=5)
    result = idx.match([1, 2, 3])
    assert result["w0"].blocks == 3 and result["w0"].needs_resync
    assert idx.stats().workers_needing_resync == ("w0",)
    assert idx.stats().gaps_detected == 1
    # The sequence continues from the event that arrived: no second request for seq 6.
    assert idx.apply(stored(seq=6, hashes=(4,), parent=3)) is None


def test_gap_on_removal_still_removes() -> None:
    idx = index()
    idx.apply(stored(seq=0, hashes=(1, 2, 3)))
    request = idx.apply(removed(seq=3, hashes=(2,)))
    assert request is not None and request.expected_seq == 1
    assert lengths(idx.match([1, 2, 3])) == {"w0": 1}


def test_duplicates_and_old_events_are_ignored_and_counted() -> None:
    idx = index()
    idx.apply(stored(seq=0, hashes=(1, 2)))
    idx.apply(removed(seq=1, hashes=(2,)))
    assert idx.apply(stored(seq=0, hashes=(1, 2))) is None  # replay of seq 0
    assert idx.apply(removed(seq=1, hashes=(1,))) is None  # replay of seq 1, other payload
    assert lengths(idx.match([1, 2])) == {"w0": 1}
    stats = idx.stats()
    assert stats.duplicates_ignored == 2 and stats.events_applied == 2


def test_all_blocks_cleared_empties_one_worker() -> None:
    idx = index()
    idx.apply(stored(worker="a", seq=0, hashes=(1, 2)))
    idx.apply(stored(worker="a", seq=1, hashes=(9,), tier="host"))
    idx.apply(stored(worker="b", seq=0, hashes=(1,)))
    idx.apply(cleared(worker="a", seq=2))
    assert lengths(idx.match([1, 2])) == {"b": 1}
    assert idx.match([1])["a"].blocks == 0
    assert idx.stats().entries == 1


def test_resync_replaces_state_and_clears_the_flag() -> None:
    idx = index()
    idx.apply(stored(seq=0, hashes=(1, 2, 3)))
    idx.apply(stored(seq=4, hashes=(7,)))
    idx.resync("w0", [1, 5], [6], seq=10)
    assert idx.stats().workers_needing_resync == ()
    result = idx.match([1, 5, 6])
    assert result["w0"] == (3, 3, 2, 1, False)
    assert idx.match([1, 2])["w0"].blocks == 1
    assert idx.apply(stored(seq=11, hashes=(8,))) is None
    assert idx.apply(stored(seq=13, hashes=(9,))) is not None


def test_resync_without_seq_accepts_any_next_seq() -> None:
    idx = index()
    idx.resync("w0", [1])
    assert idx.apply(stored(seq=77, hashes=(2,), parent=1)) is None
    assert idx.match([1, 2])["w0"].blocks == 2


def test_first_event_of_a_worker_starts_its_sequence() -> None:
    idx = index()
    assert idx.apply(stored(seq=41)) is None
    assert idx.apply(stored(seq=42, hashes=(4,), parent=3)) is None
