"""Chained KV block hashes: the keys of the prefix index.

A request's prompt is cut into fixed-size blocks of token ids (default 16, as in
vLLM, SGLang and Dynamo); only full blocks are hashed. Each block's hash covers the
block *and every block before it*, so equal hashes at position ``i`` mean equal
prefixes of ``i + 1`` blocks and a prefix match is a walk along the chain.

Default scheme — **Dynamo-compatible** (chosen because it is the one a router can
reproduce from token ids alone, with a fixed seed, and the one Dynamo's KV events
and radix tree use):

* local hash of a block: ``xxh3_64(le_u32(tokens), seed=1337)``;
* sequence hash: the first block's is its local hash; block ``i > 0`` gets
  ``xxh3_64(le_u64(parent_sequence_hash) || le_u64(local_hash), seed=1337)``.

:func:`block_hashes` returns the sequence hashes (what the index stores);
:func:`local_block_hashes` the local ones, equal to Dynamo's
``dynamo._core.compute_block_hash_for_seq`` for the same tokens and block size.
Dynamo's LoRA / ``cache_namespace`` / multimodal salts are not reproduced; toposched
separates models with :func:`namespace_salt` inside the index instead.

vLLM computes ``H((parent_hash, tuple(token_ids), extra_keys))`` with SHA-256 over
pickle (``sha256``) or canonical CBOR (``sha256_cbor``) and a ``NONE_HASH`` parent for
block 0 that is random per process unless ``PYTHONHASHSEED`` is set. Its hashes are
therefore only reproducible with the engine's seed: :func:`vllm_block_hashes`
implements the ``sha256_cbor`` variant for a known seed (64-bit form as in vLLM's
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``); otherwise take the engine's reported
hashes as opaque ints (:func:`external_block_hashes`), as for the Mooncake traces'
``hash_ids`` (already chained, 512-token blocks). docs/prefix-hashing.md has details.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence

import cbor2
from xxhash import xxh3_64_intdigest as xxh3_64

from topology.errors import Issue, Location, ParseError, ValidationError

DEFAULT_BLOCK_SIZE = 16
#: Seed of Dynamo's ``xxh3_64_with_seed`` for both local and sequence hashes.
DYNAMO_XXH3_SEED = 1337
U64_MASK = (1 << 64) - 1
_U32_LIMIT = 1 << 32
_PAIR = struct.Struct("<QQ")


def dynamo_hash(data: bytes) -> int:
    """XXH3-64 of ``data`` with Dynamo's seed (the hash of every block and salt)."""
    return xxh3_64(data, DYNAMO_XXH3_SEED)


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValidationError("block hashing", [Issue("block_size", "must be an integer ≥ 1")])


def _pack_tokens(tokens: Sequence[int], start: int, source: str) -> bytes:
    """Little-endian u32 bytes of ``tokens``; a bad id is reported with its index."""
    try:
        return struct.pack(f"<{len(tokens)}I", *tokens)
    except struct.error as exc:
        index = next(i for i, t in enumerate(tokens)
                     if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < _U32_LIMIT)
        raise ParseError(f"invalid token id {tokens[index]!r}",
                         Location(source, path=f"tokens[{start + index}]"),
                         "an integer in [0, 2**32)") from exc


def local_block_hash(tokens: Sequence[int], *, source: str = "<tokens>") -> int:
    """Dynamo's local hash of one block: xxh3-64 (seed 1337) of its little-endian u32 ids."""
    return xxh3_64(_pack_tokens(tokens, 0, source), DYNAMO_XXH3_SEED)


def chain_hash(parent: int | None, local: int) -> int:
    """Sequence hash of a block from its parent's sequence hash and its own local hash."""
    if parent is None:
        return local
    return xxh3_64(_PAIR.pack(parent, local), DYNAMO_XXH3_SEED)


def local_block_hashes(tokens: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE,
                       *, source: str = "<tokens>") -> list[int]:
    """Local (unchained) hashes of every full block; a trailing partial block is ignored."""
    _check_block_size(block_size)
    full = len(tokens) - len(tokens) % block_size
    packed = _pack_tokens(tokens[:full], 0, source)  # one pack for all blocks, then slices
    step = 4 * block_size
    return [xxh3_64(packed[i:i + step], DYNAMO_XXH3_SEED) for i in range(0, 4 * full, step)]


def block_hashes(tokens: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE, *,
                 parent: int | None = None, source: str = "<tokens>") -> list[int]:
    """Chained (sequence) hashes of every full block, in chain order.

    ``parent`` continues an existing chain (the sequence hash of the block before
    ``tokens[0]``), so hashing a prompt in pieces gives the same result as at once.
    """
    out = local_block_hashes(tokens, block_size, source=source)
    # chain_hash inlined (a call per block is a third of the time on short blocks)
    start = 0 if parent is not None else 1
    pack, previous = _PAIR.pack, parent if parent is not None else (out[0] if out else 0)
    for i in range(start, len(out)):
        previous = out[i] = xxh3_64(pack(previous, out[i]), DYNAMO_XXH3_SEED)
    return out


def as_u64(value: int) -> int:
    """Map a signed 64-bit hash (e.g. Python's ``hash()``) to the unsigned form we store."""
    if not -(1 << 63) <= value <= U64_MASK:
        raise ValidationError("block hash", [Issue("value", f"{value} does not fit in 64 bits")])
    return value & U64_MASK


def external_block_hashes(values: Iterable[object], *, source: str = "<hash_ids>") -> list[int]:
    """Validate engine- or trace-provided hashes (opaque, already chained) as u64 ints.

    Mooncake ``hash_ids`` and vLLM/SGLang event hashes go through here; nothing is
    rehashed, so they match what the engine reports. All bad entries are reported.
    """
    out: list[int] = []
    issues: list[Issue] = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MASK:
            issues.append(Issue(f"[{i}]", f"{value!r} is not an integer in [0, 2**64)"))
        else:
            out.append(value)
    if issues:
        raise ValidationError(source, issues)
    return out


@functools.lru_cache(maxsize=4096)
def namespace_salt(model: str | None) -> int:
    """The 64-bit salt that keeps one model's blocks apart from another's (0: no model).

    The index stores ``hash ^ salt``: a bijection per model, so chains stay chains,
    and two models collide only if two hashes differ by exactly the xor of their
    salts (probability 2**-64 for hashed blocks; impossible for small trace ids,
    whose high bits are zero while every salt has its top bit set).
    """
    if not model:
        return 0
    return xxh3_64(b"toposched-model\x00" + model.encode("utf-8"), DYNAMO_XXH3_SEED) | (1 << 63)


def namespaced(hashes: Sequence[int], model: str | None) -> list[int]:
    """The keys under which ``hashes`` of ``model`` are stored in the index."""
    salt = namespace_salt(model)
    return [h ^ salt for h in hashes] if salt else list(hashes)


def _sha256_cbor(item: object) -> bytes:
    """sha256 of ``item`` in canonical CBOR, as vLLM's ``sha256_cbor`` encodes it."""
    try:
        return hashlib.sha256(cbor2.dumps(item, canonical=True)).digest()
    except (cbor2.CBOREncodeError, OverflowError) as exc:
        raise ValidationError("cbor", [Issue("extra_keys", str(exc))]) from exc


def vllm_block_hashes(tokens: Sequence[int], block_size: int = DEFAULT_BLOCK_SIZE, *,
                      hash_seed: str, lora_key: str | int | None = None,
                      cache_salt: str | None = None) -> list[int]:
    """vLLM v1 ``sha256_cbor`` block hashes as 64-bit ints, for an engine whose
    ``PYTHONHASHSEED`` is ``hash_seed``.

    Chain: ``NONE_HASH = sha256(cbor(hash_seed))``; block ``i`` is
    ``sha256(cbor((parent_digest, tuple(tokens_i), extra_keys_i)))`` where
    ``extra_keys_i`` is ``(lora_key,)`` on every block plus ``cache_salt`` on block 0,
    or ``None`` when empty (recent vLLM releases; older ones differ). The int is the
    digest's last 8 bytes read big-endian, vLLM's integer form for KV events.
    Multimodal and prompt-embedding keys are not modelled.
    """
    _check_block_size(block_size)
    parent = _sha256_cbor(hash_seed)
    out: list[int] = []
    for i in range(0, len(tokens) - len(tokens) % block_size, block_size):
        chunk = tuple(tokens[i:i + block_size])
        _pack_tokens(chunk, i, "<tokens>")
        keys: list[object] = [] if lora_key is None else [lora_key]
        if i == 0 and cache_salt:
            keys.append(cache_salt)
        parent = _sha256_cbor((parent, chunk, tuple(keys) if keys else None))
        out.append(int.from_bytes(parent[-8:], "big"))
    return out
