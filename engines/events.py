"""KV-cache events as vLLM and SGLang publish them on ZMQ, decoded with msgspec.

Wire format (``--kv-events-config``, publisher ``zmq``): multipart messages
``[topic, seq, payload]`` where ``seq`` is an 8-byte big-endian sequence number per
publisher and ``payload`` is msgpack ``[ts, events, dp_rank]`` (``dp_rank`` may be
missing). Each event comes in one of two encodings, both in use:

* **maps keyed by** ``"type"`` (vLLM since mid-2026, current SGLang):
  ``{"type": "BlockStored", "block_hashes": [...], "parent_block_hash": ..., ...}``;
* **positional arrays** (older releases): ``["BlockStored", block_hashes,
  parent_block_hash, token_ids, block_size, lora_id, medium, lora_name, extra_keys,
  group_idx, ...]``, ``["BlockRemoved", block_hashes, medium, group_idx]``,
  ``["AllBlocksCleared"]``.

The encoding is told per event from its first msgpack byte (map or array), so a batch
mixing both decodes too. Fields a release adds are ignored; an event of an unknown type
is counted and skipped, never fatal. Block hashes are ints (or bytes in some vLLM
configurations) and are treated as opaque keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

#: An engine's block hash: an int, or the digest bytes (both only compared, never read).
EngineHash = int | bytes
#: The sequence number that ends a replay answer.
END_OF_REPLAY = -1


class _Stored(msgspec.Struct, frozen=True):
    """BlockStored's fields, in the order of the positional encoding."""

    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None = None
    token_ids: list[int] = []
    block_size: int = 0
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None


class _Removed(msgspec.Struct, frozen=True):
    """BlockRemoved's fields, in the order of the positional encoding."""

    block_hashes: list[EngineHash]
    medium: str | None = None
    group_idx: int | None = None


class _Cleared(msgspec.Struct, frozen=True):
    pass


class _MapStored(_Stored, tag="BlockStored", tag_field="type", frozen=True):
    pass


class _MapRemoved(_Removed, tag="BlockRemoved", tag_field="type", frozen=True):
    pass


class _MapCleared(_Cleared, tag="AllBlocksCleared", tag_field="type", frozen=True):
    pass


class _ArrayStored(_Stored, tag="BlockStored", array_like=True, frozen=True):
    pass


class _ArrayRemoved(_Removed, tag="BlockRemoved", array_like=True, frozen=True):
    pass


class _ArrayCleared(_Cleared, tag="AllBlocksCleared", array_like=True, frozen=True):
    pass


_MapEvent = _MapStored | _MapRemoved | _MapCleared
_ArrayEvent = _ArrayStored | _ArrayRemoved | _ArrayCleared


@dataclass(frozen=True, slots=True)
class BlocksStored:
    """An engine cached these blocks (chain order); ``parent`` precedes the first.

    ``token_ids`` are the blocks' tokens, ``block_size`` per block (0: not sent);
    ``extra_keys`` has one entry per block (LoRA, multimodal, cache salt) or is None.
    """

    block_hashes: tuple[EngineHash, ...]
    parent: EngineHash | None
    token_ids: tuple[int, ...]
    block_size: int
    medium: str | None = None
    lora_id: int | None = None
    lora_name: str | None = None
    extra_keys: tuple[Any, ...] | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class BlocksRemoved:
    """An engine dropped these blocks from ``medium``."""

    block_hashes: tuple[EngineHash, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllCleared:
    """An engine dropped its whole cache."""


EngineEvent = BlocksStored | BlocksRemoved | AllCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    """One published batch: its time, events in order, DP rank, and how many events
    were skipped (unknown type or malformed)."""

    ts: float
    events: tuple[EngineEvent, ...]
    dp_rank: int | None = None
    skipped: int = 0


class EventDecodeError(ValueError):
    """A payload that is not a batch at all (the whole batch is lost, not one event)."""


class _Batch(msgspec.Struct, array_like=True, frozen=True):
    ts: float
    events: list[msgspec.Raw]
    dp_rank: int | None = None


_BATCH = msgspec.msgpack.Decoder(_Batch)
_MAP = msgspec.msgpack.Decoder(_MapEvent)
_ARRAY = msgspec.msgpack.Decoder(_ArrayEvent)
#: First msgpack byte of a map (fixmap, map16, map32); anything else is read as an array.
_MAP_BYTES = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])


def decode_batch(payload: bytes) -> EventBatch:
    """Decode a ``[ts, events, dp_rank]`` payload; events in either encoding."""
    try:
        batch = _BATCH.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EventDecodeError(f"not a KV-event batch: {exc}") from exc
    events: list[EngineEvent] = []
    for raw in batch.events:
        event = _decode_event(raw)
        if event is not None:
            events.append(event)
    return EventBatch(batch.ts, tuple(events), batch.dp_rank, len(batch.events) - len(events))


def _decode_event(raw: msgspec.Raw) -> EngineEvent | None:
    data = bytes(raw)
    try:
        if data and data[0] in _MAP_BYTES:
            return _native(_MAP.decode(data))
        return _native(_ARRAY.decode(data))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _native(event: _MapEvent | _ArrayEvent) -> EngineEvent:
    if isinstance(event, _Stored):
        return BlocksStored(
            tuple(event.block_hashes), event.parent_block_hash, tuple(event.token_ids),
            event.block_size, event.medium, event.lora_id, event.lora_name,
            tuple(event.extra_keys) if event.extra_keys is not None else None,
            event.group_idx)
    if isinstance(event, _Removed):
        return BlocksRemoved(tuple(event.block_hashes), event.medium, event.group_idx)
    return AllCleared()


def decode_seq(frame: bytes) -> int:
    """An 8-byte big-endian sequence number (signed: the replay's end marker is -1)."""
    if len(frame) != 8:
        raise EventDecodeError(f"sequence frame of {len(frame)} bytes, expected 8")
    return int.from_bytes(frame, "big", signed=True)


def encode_seq(seq: int) -> bytes:
    """The 8-byte big-endian form of a sequence number (what a replay request sends)."""
    return seq.to_bytes(8, "big", signed=True)


def encode_extra(value: Any) -> bytes:
    """Canonical bytes of one block's extra keys (msgpack), for keying."""
    return msgspec.msgpack.encode(value)
