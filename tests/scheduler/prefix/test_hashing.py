"""Block hashing: chaining, partial blocks, determinism, known vectors, compatibility."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from xxhash import xxh3_64_intdigest as xxh3_64

from scheduler.prefix.hashing import (
    as_u64,
    block_hashes,
    chain_hash,
    external_block_hashes,
    local_block_hash,
    local_block_hashes,
    namespace_salt,
    namespaced,
    vllm_block_hashes,
)
from topology.errors import InputError, ParseError, ValidationError

TOKENS = st.lists(st.integers(0, 2**32 - 1), max_size=80)

# Published / independently computed XXH3-64 values (input: bytes(range(256)) * 4 prefix).
XXH3_VECTORS = [
    (0, 0, 0x2D06800538D394C2),
    (0, 1337, 0xD1F3E77444430AB9),
    (3, 1337, 0xEFF71F3763B5E6F5),
    (8, 1337, 0x83B1D2CDAF40C762),
    (16, 1337, 0xD6D1970C1B420FA4),
    (100, 1337, 0x20F1A7EB4D519336),
    (200, 1337, 0x8F48307E44716AC5),
    (1000, 1337, 0x8E0E6CD41222559F),
    (1000, 0, 0xD33DD80B46F60E50),
]


@pytest.mark.parametrize(("length", "seed", "expected"), XXH3_VECTORS)
def test_xxh3_known_vectors(length: int, seed: int, expected: int) -> None:
    data = (bytes(range(256)) * 4)[:length]
    assert xxh3_64(data, seed) == expected


def test_dynamo_known_vector() -> None:
    # Values printed by dynamo._core.compute_block_hash_for_seq(list(range(32)), 16).
    assert local_block_hashes(list(range(32))) == [15310707395893867146, 15292316782987903195]
    # Sequence hashes: the first equals its local hash, the second chains it.
    assert block_hashes(list(range(32))) == [15310707395893867146, 13769157705258532664]


def test_chain_hash_of_first_block_is_local_hash() -> None:
    assert chain_hash(None, 42) == 42
    expected = xxh3_64(struct.pack("<QQ", 7, 42), 1337)
    assert chain_hash(7, 42) == expected


def test_change_in_block_zero_changes_every_later_hash() -> None:
    tokens = list(range(16 * 6))
    changed = [tokens[0] + 1, *tokens[1:]]
    before, after = block_hashes(tokens), block_hashes(changed)
    assert len(before) == len(after) == 6
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_change_in_later_block_keeps_the_prefix() -> None:
    tokens = list(range(16 * 4))
    changed = [*tokens[:40], 9999, *tokens[41:]]
    before, after = block_hashes(tokens), block_hashes(changed)
    assert before[:2] == after[:2]
    assert before[2] != after[2] and before[3] != after[3]


def test_partial_blocks_are_ignored() -> None:
    tokens = list(range(47))
    assert len(block_hashes(tokens)) == 2
    assert block_hashes(tokens) == block_hashes(tokens[:32])
    assert block_hashes(list(range(15))) == []


def test_block_size_is_configurable() -> None:
    tokens = list(range(64))
    assert len(block_hashes(tokens, 32)) == 2
    assert len(block_hashes(tokens, 1)) == 64
    assert block_hashes(tokens, 32)[0] == local_block_hash(tokens[:32])


@given(TOKENS, st.integers(1, 20))
def test_hashing_in_pieces_equals_hashing_at_once(tokens: list[int], block_size: int) -> None:
    whole = block_hashes(tokens, block_size)
    cut = (len(tokens) // block_size // 2) * block_size
    first = block_hashes(tokens[:cut], block_size)
    rest = block_hashes(tokens[cut:], block_size, parent=first[-1] if first else None)
    assert first + rest == whole
    assert block_hashes(tokens, block_size) == whole  # deterministic
    assert all(0 <= h < 2**64 for h in whole)


def test_bad_token_is_reported_with_its_index() -> None:
    with pytest.raises(ParseError) as caught:
        block_hashes([1, 2, 3, -4, *range(20)], 4)
    assert caught.value.location.path == "tokens[3]"
    assert "2**32" in str(caught.value)


def test_bad_block_size_is_input_error() -> None:
    with pytest.raises(ValidationError, match="block_size"):
        block_hashes([1, 2, 3], 0)


def test_external_hashes_pass_through_and_report_every_bad_entry() -> None:
    assert external_block_hashes([0, 14, 2**64 - 1]) == [0, 14, 2**64 - 1]
    with pytest.raises(ValidationError) as caught:
        external_block_hashes([1, -1, "x", 2**64, True], source="trace.jsonl:3 hash_ids")
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["[1]", "[2]", "[3]", "[4]"]
    assert isinstance(caught.value, InputError)


def test_as_u64_maps_signed_hashes() -> None:
    assert as_u64(-1) == 2**64 - 1
    assert as_u64(5) == 5
    with pytest.raises(ValidationError):
        as_u64(2**64)


def test_namespaces_separate_models_and_keep_default_space() -> None:
    assert namespace_salt(None) == namespace_salt("") == 0
    assert namespaced([1, 2], None) == [1, 2]
    a, b = namespaced([1, 2], "model-a"), namespaced([1, 2], "model-b")
    assert a != b and a != [1, 2]
    assert namespace_salt("model-a") >> 63 == 1  # top bit set: small trace ids never collide


def test_vllm_sha256_cbor_known_vector() -> None:
    # Computed with cbor2.dumps(canonical=True) + hashlib.sha256 exactly as vLLM chains them.
    assert vllm_block_hashes(list(range(40)), hash_seed="0") == [
        12687895063098490012, 1814341696565857452]


def test_vllm_hashes_chain_and_depend_on_seed_and_salt() -> None:
    tokens = list(range(64))
    base = vllm_block_hashes(tokens, hash_seed="0")
    assert vllm_block_hashes(tokens, hash_seed="1") != base
    salted = vllm_block_hashes(tokens, hash_seed="0", cache_salt="tenant-7")
    assert all(x != y for x, y in zip(base, salted, strict=True))
    assert vllm_block_hashes(tokens[:40], hash_seed="0") == base[:2]


def test_xxh3_matches_dynamo() -> None:
    import dynamo._core as core
    rnd = random.Random(5)
    for block_size in (1, 2, 4, 16, 60, 64, 300):
        tokens = [rnd.randrange(2**32) for _ in range(block_size * 3 + 1)]
        expected = core.compute_block_hash_for_seq(tokens, block_size)
        count = len(tokens) // block_size
        mine = [xxh3_64(struct.pack(f"<{block_size}I",
                                         *tokens[i * block_size:(i + 1) * block_size]), 1337)
                for i in range(count)]
        assert mine == expected[:count]
