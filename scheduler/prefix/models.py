"""Plain immutable results of the prefix index: match results, snapshots, statistics.

Policies are pure functions over these values; nothing here refers back to the index.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict


class MatchInfo(NamedTuple):
    """How much of a request's block chain one worker holds, counted from block 0.

    A ``NamedTuple`` rather than a pydantic model on purpose: a lookup over 1,024
    workers builds one per worker, and tuples are immutable and ~20x cheaper.

    * ``blocks`` – longest leading run of blocks the worker holds *or is predicted
      to hold* (see :meth:`PrefixIndex.predict`);
    * ``confirmed`` – longest leading run backed by engine events only;
    * ``gpu`` / ``host`` – the tier of those confirmed blocks (a block held on both
      tiers counts as ``gpu``), so ``gpu + host == confirmed``;
    * ``needs_resync`` – events of this worker were lost; its entries may be stale.
    """

    blocks: int = 0
    confirmed: int = 0
    gpu: int = 0
    host: int = 0
    needs_resync: bool = False

    @property
    def predicted(self) -> int:
        """Blocks of the match that rest on predictions, not on engine events."""
        return self.blocks - self.confirmed


#: The shared result of every worker that holds not even the first block.
NO_MATCH = MatchInfo()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class WorkerSnapshot(_Frozen):
    """One worker's entries at snapshot time (keys as stored: model-namespaced)."""

    name: str
    gpu: frozenset[int]
    host: frozenset[int]
    predicted: frozenset[int]
    last_seq: int | None
    needs_resync: bool
    capacity: int | None


class IndexSnapshot(_Frozen):
    """Every worker's entries; feed ``gpu``/``host`` back to :meth:`PrefixIndex.resync`
    (with ``model=None``, as the keys are already namespaced) to restore a worker."""

    taken_at: float
    workers: tuple[WorkerSnapshot, ...]


class IndexStats(_Frozen):
    """Counters and sizes of a :class:`PrefixIndex`.

    ``entries`` counts (worker, block) pairs with a confirmed tier; ``blocks`` the
    distinct keys among them; ``gpu_entries``/``host_entries`` per tier (a pair on
    both tiers counts in each).
    """

    workers: int
    blocks: int
    entries: int
    gpu_entries: int
    host_entries: int
    predicted_entries: int
    max_entries: int | None
    events_applied: int
    duplicates_ignored: int
    gaps_detected: int
    resyncs: int
    evicted_global: int
    evicted_capacity: int
    predictions_made: int
    predictions_confirmed: int
    predictions_expired: int
    predictions_evicted: int
    workers_needing_resync: tuple[str, ...]
