"""A deliberately naive prefix index: the oracle for the property tests.

Same documented semantics as :class:`PrefixIndex` — per-worker sequence checks,
tiers, predictions with deadlines, LRU stamps (a chain stamped leaf first), global
and per-worker bounds — written with plain dicts and linear scans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from scheduler.prefix.models import MatchInfo

Key = tuple[str | None, int]
GPU, HOST = 1, 2


@dataclass
class RefWorker:
    tiers: dict[Key, int] = field(default_factory=dict)
    stamps: dict[Key, int] = field(default_factory=dict)
    predicted: dict[Key, float] = field(default_factory=dict)
    last_seq: int | None = None
    stale: bool = False
    capacity: int | None = None


class ReferenceIndex:
    def __init__(self, *, max_entries: int | None, worker_capacity: int | None) -> None:
        self.workers: dict[str, RefWorker] = {}
        self.max_entries = max_entries
        self.default_capacity = worker_capacity
        self.overrides: dict[str, int | None] = {}
        self.stamp = 0

    def worker(self, name: str) -> RefWorker:
        if name not in self.workers:
            capacity = self.overrides.get(name, self.default_capacity)
            self.workers[name] = RefWorker(capacity=capacity)
        return self.workers[name]

    def check_seq(self, name: str, seq: int) -> tuple[bool, bool]:
        """(apply?, gap?)."""
        w = self.worker(name)
        if w.last_seq is not None and seq <= w.last_seq:
            return False, False
        gap = w.last_seq is not None and seq != w.last_seq + 1
        w.last_seq = seq
        w.stale = w.stale or gap
        return True, gap

    def store(self, name: str, hashes: Sequence[int], tier: int, model: str | None) -> None:
        w = self.worker(name)
        for h in reversed(hashes):
            key = (model or None, h)
            w.tiers[key] = w.tiers.get(key, 0) | tier
            w.stamps[key] = self.stamp
            self.stamp += 1
        for h in hashes:
            w.predicted.pop((model or None, h), None)

    def enforce(self, name: str) -> None:
        w = self.workers[name]
        while w.capacity is not None and len(w.tiers) > w.capacity:
            self.drop(w, min(w.stamps, key=w.stamps.__getitem__))
        while self.max_entries is not None and self.entries() > self.max_entries:
            owner, key = min(((v, k) for v in self.workers.values() for k in v.stamps),
                             key=lambda pair: pair[0].stamps[pair[1]])
            self.drop(owner, key)

    @staticmethod
    def drop(w: RefWorker, key: Key) -> None:
        del w.tiers[key]
        del w.stamps[key]

    def entries(self) -> int:
        return sum(len(w.tiers) for w in self.workers.values())

    def remove(self, name: str, hashes: Sequence[int], tier: int, model: str | None) -> None:
        w = self.worker(name)
        for h in hashes:
            key = (model or None, h)
            w.predicted.pop(key, None)
            if key in w.tiers and w.tiers[key] & tier:
                w.tiers[key] &= ~tier
                if not w.tiers[key]:
                    self.drop(w, key)

    def clear(self, name: str, *, predictions: bool) -> None:
        w = self.worker(name)
        w.tiers.clear()
        w.stamps.clear()
        if predictions:
            w.predicted.clear()

    def resync(self, name: str, gpu: Sequence[int], host: Sequence[int],
               seq: int | None, model: str | None) -> None:
        self.clear(name, predictions=False)
        self.store(name, gpu, GPU, model)
        self.store(name, host, HOST, model)
        w = self.workers[name]
        w.last_seq, w.stale = seq, False
        self.enforce(name)

    def touch(self, name: str, hashes: Sequence[int], model: str | None) -> None:
        w = self.workers.get(name)
        if w is None:
            return
        for h in reversed(hashes):
            key = (model or None, h)
            if key in w.tiers:
                w.stamps[key] = self.stamp
                self.stamp += 1

    def predict(self, name: str, hashes: Sequence[int], deadline: float,
                model: str | None) -> None:
        w = self.worker(name)
        for h in hashes:
            key = (model or None, h)
            if key not in w.tiers:
                w.predicted[key] = deadline

    def set_capacity(self, name: str, capacity: int | None) -> None:
        self.overrides[name] = capacity
        self.worker(name).capacity = capacity
        self.enforce(name)

    def remove_worker(self, name: str) -> None:
        self.workers.pop(name, None)

    def match(self, hashes: Sequence[int], now: float, model: str | None) -> dict[str, MatchInfo]:
        out = {}
        for name, w in self.workers.items():
            keys = [(model or None, h) for h in hashes]
            confirmed = 0
            while confirmed < len(keys) and keys[confirmed] in w.tiers:
                confirmed += 1
            blocks = 0
            while blocks < len(keys) and (keys[blocks] in w.tiers or
                                          w.predicted.get(keys[blocks], -1.0) > now):
                blocks += 1
            host = sum(1 for k in keys[:confirmed] if w.tiers[k] == HOST)
            out[name] = MatchInfo(blocks, confirmed, confirmed - host, host, w.stale)
        return out
