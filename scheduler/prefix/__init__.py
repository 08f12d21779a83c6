"""KV prefix index: chained block hashes, KV events, and the per-worker prefix matcher.

The router asks :class:`PrefixIndex` how long a prefix of a request's block chain
each worker already holds; engines (through their sidecars) keep it current with
:mod:`~scheduler.prefix.events`; :mod:`~scheduler.prefix.hashing` turns token ids
into the chained block hashes that key it.
"""

from scheduler.prefix.events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    ResyncRequest,
    parse_event,
)
from scheduler.prefix.hashing import (
    DEFAULT_BLOCK_SIZE,
    block_hashes,
    external_block_hashes,
    local_block_hashes,
)
from scheduler.prefix.index import PrefixIndex
from scheduler.prefix.models import IndexSnapshot, IndexStats, MatchInfo, WorkerSnapshot

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "IndexSnapshot",
    "IndexStats",
    "MatchInfo",
    "PrefixIndex",
    "ResyncRequest",
    "WorkerSnapshot",
    "block_hashes",
    "external_block_hashes",
    "local_block_hashes",
    "parse_event",
]
