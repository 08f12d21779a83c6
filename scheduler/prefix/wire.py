"""Fast decoding of KV-event JSON for :meth:`PrefixIndex.apply`.

:func:`scheduler.prefix.events.parse_event` is the reference: it defines which events
are valid and words every error. It builds a pydantic model per event (~2.7 µs for a
15-block event on this repo's 2-vCPU VM); the index only needs the fields, so this
module validates the same JSON with the *same* pydantic field constraints into plain
``TypedDict`` values (~1.7 µs; msgspec would be ~1.2 µs but lives in ``engines/`` alone,
tests/test_architecture.py) and hands the index a small tuple.

Whatever this decoder refuses is decoded again by :func:`parse_event`, so an error is
the reference's error, word for word. ``tests/scheduler/prefix/test_wire.py`` checks
that both accept the same events with the same fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, NotRequired

import pydantic
from pydantic import ConfigDict, Field
from typing_extensions import TypedDict

from scheduler.prefix.events import BlockHash, Seq, Tier, WorkerName, parse_event

_Hashes = Annotated[tuple[BlockHash, ...], Field(min_length=1)]
_FORBID = ConfigDict(extra="forbid")


class _Stored(TypedDict):
    __pydantic_config__ = _FORBID  # type: ignore[misc]
    kind: Literal["block_stored"]
    worker: WorkerName
    seq: Seq
    block_hashes: _Hashes
    parent_hash: NotRequired[BlockHash | None]
    tier: NotRequired[Tier]
    model: NotRequired[str | None]


class _Removed(TypedDict):
    __pydantic_config__ = _FORBID  # type: ignore[misc]
    kind: Literal["block_removed"]
    worker: WorkerName
    seq: Seq
    block_hashes: _Hashes
    tier: NotRequired[Tier]
    model: NotRequired[str | None]


class _Cleared(TypedDict):
    __pydantic_config__ = _FORBID  # type: ignore[misc]
    kind: Literal["all_blocks_cleared"]
    worker: WorkerName
    seq: Seq


_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
    Annotated[_Stored | _Removed | _Cleared, Field(discriminator="kind")])


class WireEvent(NamedTuple):
    """One validated event's fields (``block_hashes`` empty for ``all_blocks_cleared``)."""

    kind: str
    worker: str
    seq: int
    block_hashes: tuple[int, ...] = ()
    tier: str = "gpu"
    model: str | None = None
    parent_hash: int | None = None


def decode_event(data: bytes | str, *, source: str = "<kv event>") -> WireEvent:
    """One KV event from JSON, validated as :func:`parse_event` validates it.

    Raises exactly what :func:`parse_event` raises for ``data`` when it is invalid.
    """
    try:
        event = _ADAPTER.validate_json(data)
    except pydantic.ValidationError:
        event = parse_event(data, source=source).model_dump()  # raises the reference's error
    get = event.get
    return WireEvent(event["kind"], event["worker"], event["seq"], get("block_hashes", ()),
                     get("tier", "gpu"), get("model"), get("parent_hash"))
