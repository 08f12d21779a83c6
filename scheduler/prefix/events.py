"""KV cache events that engines (through their sidecars) report to the prefix index.

Wire form: JSON objects with a ``kind`` tag, snake_case keys, e.g.::

    {"kind": "block_stored", "worker": "w0", "seq": 7, "block_hashes": [11, 12],
     "parent_hash": 10, "tier": "gpu", "model": "llama-3-70b"}

``seq`` is a per-worker sequence number that grows by one per event. The index uses
it to detect lost events (a gap → :class:`ResyncRequest`) and replays (old or equal
``seq`` → ignored). Hashes are unsigned 64-bit ints in chain order (use
:func:`scheduler.prefix.hashing.as_u64` for engines that report signed values).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from topology.errors import Issue, Location, ParseError, ValidationError

Tier = Literal["gpu", "host"]
BlockHash = Annotated[int, Field(ge=0, le=(1 << 64) - 1, strict=True)]
WorkerName = Annotated[str, Field(min_length=1, max_length=256)]
Seq = Annotated[int, Field(ge=0, strict=True)]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BlockStored(_Event):
    """A worker now holds these blocks (chain order); ``parent_hash`` precedes the first."""

    kind: Literal["block_stored"] = "block_stored"
    worker: WorkerName
    seq: Seq
    block_hashes: tuple[BlockHash, ...] = Field(min_length=1)
    parent_hash: BlockHash | None = None
    tier: Tier = "gpu"
    #: Blocks of different models never match; ``None`` is the shared default space.
    model: str | None = None


class BlockRemoved(_Event):
    """A worker dropped these blocks from ``tier`` (they may remain on the other tier)."""

    kind: Literal["block_removed"] = "block_removed"
    worker: WorkerName
    seq: Seq
    block_hashes: tuple[BlockHash, ...] = Field(min_length=1)
    tier: Tier = "gpu"
    #: Must name the model the blocks were stored under.
    model: str | None = None


class AllBlocksCleared(_Event):
    """A worker dropped its whole cache (every tier and model)."""

    kind: Literal["all_blocks_cleared"] = "all_blocks_cleared"
    worker: WorkerName
    seq: Seq


KvEvent = Annotated[BlockStored | BlockRemoved | AllBlocksCleared, Field(discriminator="kind")]


class ResyncRequest(BaseModel):
    """The index missed events of ``worker``: ask it for a full state dump.

    ``expected_seq`` is the seq the index waited for, ``got_seq`` the one that came.
    The event itself was applied as far as that is safe; the worker is flagged
    ``needs_resync`` (visible in match results) until :meth:`PrefixIndex.resync`.
    """

    model_config = ConfigDict(frozen=True)

    worker: str
    expected_seq: int
    got_seq: int


_ADAPTER: pydantic.TypeAdapter[BlockStored | BlockRemoved | AllBlocksCleared] = (
    pydantic.TypeAdapter(KvEvent)
)
_TAGS = ("block_stored", "block_removed", "all_blocks_cleared")


def _path(loc: tuple[int | str, ...]) -> str:
    """``('block_stored', 'block_hashes', 3)`` → ``block_hashes[3]`` (tag dropped)."""
    parts = list(loc[1:] if loc and loc[0] in _TAGS else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "kind"


def _issues(exc: pydantic.ValidationError) -> list[Issue]:
    return [Issue(_path(tuple(err["loc"])), err["msg"]) for err in exc.errors()]


def parse_event(data: bytes | str | Mapping[str, Any], *,
                source: str = "<kv event>") -> BlockStored | BlockRemoved | AllBlocksCleared:
    """Validate one KV event from JSON text/bytes or a decoded mapping.

    Raises :class:`~topology.errors.ParseError` for text that is not JSON and
    :class:`~topology.errors.ValidationError` listing every bad field by path
    (``block_hashes[3]: Input should be greater than or equal to 0``).
    """
    if isinstance(data, bytes | str):
        return _parse_json_event(data, source)
    if not isinstance(data, Mapping):
        raise ParseError(f"got {type(data).__name__}", Location(source), "a JSON object")
    try:
        return _ADAPTER.validate_python(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(source, _issues(exc)) from exc


def _parse_json_event(data: bytes | str,
                      source: str) -> BlockStored | BlockRemoved | AllBlocksCleared:
    """JSON text straight into the model (pydantic-core parses it: ~2x json.loads + validate)."""
    try:
        return _ADAPTER.validate_json(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        if any(err["type"] == "json_invalid" for err in errors):
            raise ParseError(f"not JSON: {errors[0]['msg']}", Location(source),
                             "a JSON object") from exc
        decoded = _loads_or_none(data)
        if decoded is not None and not isinstance(decoded, Mapping):
            raise ParseError(f"got {type(decoded).__name__}", Location(source),
                             "a JSON object") from exc
        raise ValidationError(source, _issues(exc)) from exc


def _loads_or_none(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
