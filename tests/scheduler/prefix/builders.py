"""Builders for prefix-index tests: events with keyword defaults and a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.prefix.events import AllBlocksCleared, BlockRemoved, BlockStored, Tier
from scheduler.prefix.index import PrefixIndex
from scheduler.prefix.models import MatchInfo


class FakeClock:
    """A clock that only moves when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stored(*, worker: str = "w0", seq: int = 0, hashes: Sequence[int] = (1, 2, 3),
           parent: int | None = None, tier: Tier = "gpu",
           model: str | None = None) -> BlockStored:
    return BlockStored(worker=worker, seq=seq, block_hashes=tuple(hashes),
                       parent_hash=parent, tier=tier, model=model)


def removed(*, worker: str = "w0", seq: int = 1, hashes: Sequence[int] = (3,),
            tier: Tier = "gpu", model: str | None = None) -> BlockRemoved:
    return BlockRemoved(worker=worker, seq=seq, block_hashes=tuple(hashes), tier=tier,
                        model=model)


def cleared(*, worker: str = "w0", seq: int = 1) -> AllBlocksCleared:
    return AllBlocksCleared(worker=worker, seq=seq)


def index(*, clock: FakeClock | None = None, max_entries: int | None = None,
          worker_capacity: int | None = None, max_predicted: int = 10_000) -> PrefixIndex:
    return PrefixIndex(clock=clock or FakeClock(), max_entries=max_entries,
                       worker_capacity=worker_capacity, max_predicted=max_predicted)


def lengths(result: dict[str, MatchInfo]) -> dict[str, int]:
    """Only the non-zero prefix lengths of a match result."""
    return {name: info.blocks for name, info in result.items() if info.blocks}
