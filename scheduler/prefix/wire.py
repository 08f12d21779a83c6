"""Fast decoding of KV-event JSON for :meth:`PrefixIndex.apply` (msgspec).

:func:`scheduler.prefix.events.parse_event` (pydantic) is the reference: it defines
which events are valid and words every error. Decoding the same JSON with
pydantic costs ~2.5 µs per typical event and building a pydantic model from
already-checked fields ~3 µs more, against ~0.7 µs for msgspec straight into
these structs (measured on this repo's 2-vCPU VM; ``bench/results/prefix_index.md``
is the end-to-end figure). The index applies an event from its fields, so it
takes these structs as they are.

Validity is the reference's: the structs carry the same constraints (tag, field
names and types, no unknown fields, lengths, non-negative integers), the one bound
msgspec cannot state (hashes below 2**64) is checked after decoding, and
whatever this decoder refuses is decoded again by :func:`parse_event` so that
the error is the reference's error, word for word. ``tests/scheduler/prefix/
test_wire.py`` checks both agree on generated valid and invalid events.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from scheduler.prefix.events import AllBlocksCleared, BlockRemoved, BlockStored, parse_event

_U64_MAX = (1 << 64) - 1
_Hash = Annotated[int, msgspec.Meta(ge=0)]
_Hashes = Annotated[tuple[_Hash, ...], msgspec.Meta(min_length=1)]
_Worker = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Seq = Annotated[int, msgspec.Meta(ge=0)]


class WireStored(msgspec.Struct, tag_field="kind", tag="block_stored",
                 forbid_unknown_fields=True, frozen=True):
    """``block_stored``, as :class:`~scheduler.prefix.events.BlockStored`."""

    worker: _Worker
    seq: _Seq
    block_hashes: _Hashes
    parent_hash: _Hash | None = None
    tier: Literal["gpu", "host"] = "gpu"
    model: str | None = None


class WireRemoved(msgspec.Struct, tag_field="kind", tag="block_removed",
                  forbid_unknown_fields=True, frozen=True):
    """``block_removed``, as :class:`~scheduler.prefix.events.BlockRemoved`."""

    worker: _Worker
    seq: _Seq
    block_hashes: _Hashes
    tier: Literal["gpu", "host"] = "gpu"
    model: str | None = None


class WireCleared(msgspec.Struct, tag_field="kind", tag="all_blocks_cleared",
                  forbid_unknown_fields=True, frozen=True):
    """``all_blocks_cleared``, as :class:`~scheduler.prefix.events.AllBlocksCleared`."""

    worker: _Worker
    seq: _Seq


WireEvent = WireStored | WireRemoved | WireCleared
AnyEvent = BlockStored | BlockRemoved | AllBlocksCleared | WireEvent
_DECODER = msgspec.json.Decoder(WireEvent)


def decode_event(data: bytes | str, *, source: str = "<kv event>") -> AnyEvent:
    """One KV event from JSON: a wire struct, or the reference's error.

    Raises exactly what :func:`parse_event` raises for ``data`` when it is invalid.
    """
    try:
        event = _DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return parse_event(data, source=source)
    if isinstance(event, WireCleared):
        return event
    if max(event.block_hashes) > _U64_MAX or (
            isinstance(event, WireStored) and event.parent_hash is not None
            and event.parent_hash > _U64_MAX):
        return parse_event(data, source=source)
    return event
