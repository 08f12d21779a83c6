"""Building the router's immutable :class:`~policies.snapshot.Snapshot` from cluster state.

The snapshot types live in :mod:`policies.snapshot` (policies may import only
``topology``); this module fills them: locality domains from the fabric, placement
pairings, in-flight link load, and — for the CLI and tests — a *state document*.

State document (YAML or JSON, ``version: 1``)::

    version: 1
    model: llama-3-70b          # KV bytes per token from config/models.yaml …
    kv_bytes_per_token: 327680  # … or given directly (wins over model)
    block_tokens: 512           # tokens per KV block (the hashes' block size)
    workers:
      - id: prefill-0
        role: prefill           # prefill | decode | both
        gpus: [a1-r0-h0/gpu0]   # GPU names of the fabric; the first one locates it
        queued_tokens: 0        # prompt tokens waiting for prefill
        running_requests: 0
        max_running_requests: 256
        free_kv_blocks: 4000
        capacity_kv_blocks: 8000
        prefill_tokens_per_s: 20000
        cached_blocks: [11, 12, 13]   # block hashes held on GPU, chain order
    preferred_pairs:            # placement pairings (also: --placement)
      - {prefill: prefill-0, decode: decode-0, weight: 1.0}
    link_load: {"leaf:a1-rail0:up": 2}   # transfers in flight per link id
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.snapshot import IntArray, Role, Snapshot, Worker
from scheduler.kv import kv_bytes_per_token
from scheduler.models_config import load_models
from scheduler.prefix import PrefixIndex
from topology.distance import DistanceModel
from topology.documents import load_yaml, validate
from topology.errors import Issue, NotFoundError, ValidationError

BlockHash = Annotated[int, Field(ge=0, le=(1 << 64) - 1, strict=True)]


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WorkerEntry(_Doc):
    """One worker of a state document."""

    id: str = Field(min_length=1)
    role: Role
    gpus: list[str] = Field(min_length=1)
    queued_tokens: int = Field(default=0, ge=0)
    running_requests: int = Field(default=0, ge=0)
    max_running_requests: int = Field(default=256, ge=1)
    free_kv_blocks: int = Field(ge=0)
    capacity_kv_blocks: int | None = Field(default=None, ge=0)
    prefill_tokens_per_s: float = Field(default=20_000.0, gt=0)
    cached_blocks: list[BlockHash] = Field(default_factory=list)


class PairEntry(_Doc):
    """A placement pairing: ``prefill`` prefers sending to ``decode`` (weight in [0, 1])."""

    prefill: str
    decode: str
    weight: float = Field(default=1.0, ge=0.0, le=1.0)


class StateDocument(_Doc):
    """Workers, their cached blocks and the fabric's load, version 1."""

    version: Literal[1]
    model: str | None = None
    kv_bytes_per_token: int | None = Field(default=None, ge=1)
    block_tokens: int = Field(default=512, ge=1)
    workers: list[WorkerEntry] = Field(min_length=1)
    preferred_pairs: list[PairEntry] = Field(default_factory=list)
    link_load: dict[str, int] = Field(default_factory=dict)


class PlacementPairing(BaseModel):
    """A pairing of a placement result (``scheduler.placement.result.Pairing``); its
    other fields (the tier, …) are not needed here."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    prefill: str
    decode: str
    weight: float = Field(default=1.0, ge=0.0, le=1.0)


class PlacementPairings(BaseModel):
    """The part of a placement result the router reads: its pairings."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    pairings: list[PlacementPairing] = Field(default_factory=list)


class GpuIndex(dict[str, int]):
    """Fabric index of GPU names, memoised: known names are looked up in C."""

    def __init__(self, distance: DistanceModel) -> None:
        """An empty memo over the GPUs of ``distance``."""
        super().__init__()
        self.distance = distance

    def __missing__(self, name: str) -> int:
        found = self[name] = self.distance.index(name)
        return found

    def first_gpus(self, workers: Sequence[Worker]) -> IntArray:
        """The fabric index of each worker's first GPU (the one that locates it)."""
        return np.fromiter(map(self.__getitem__, map(_FIRST, map(_GPUS, workers))),
                           dtype=np.int64, count=len(workers))


_GPUS, _FIRST = attrgetter("gpus"), itemgetter(0)


def domain_arrays(distance: DistanceModel, workers: Sequence[Worker],
                  gpu: IntArray | None = None) -> dict[str, Any]:
    """Per-worker domain ids at every locality level, from each worker's first GPU
    (``gpu``: those GPUs' fabric indices when known already).

    Ids only compare equal within one call (-1: no domain at that level).
    """
    gpu = GpuIndex(distance).first_gpus(workers) if gpu is None else gpu
    domains = {"host": distance.host_of[gpu], "nvlink_domain": distance.nvd_of[gpu],
               "rack": distance.rack_of[gpu], "pod": distance.pod_of[gpu],
               "zone": distance.zone_of[gpu], "region": _zone_regions(distance)[
                   distance.zone_of[gpu]]}
    for ids in domains.values():
        ids.flags.writeable = False
    return domains


@lru_cache(maxsize=4)
def _zone_regions(distance: DistanceModel) -> IntArray:
    """A region id per zone of the fabric (-1: the zone names no region)."""
    zones, first = np.unique(distance.zone_of, return_index=True)
    ids: dict[str, int] = {}
    result = np.full(int(zones.max()) + 1 if len(zones) else 0, -1, dtype=np.int64)
    for zone, gpu in zip(zones.tolist(), first.tolist(), strict=True):
        region = distance.locality(gpu).region
        if region is not None:
            result[zone] = ids.setdefault(region, len(ids))
    return result


def build_snapshot(distance: DistanceModel, workers: Sequence[Worker], *,
                   preferred_pairs: Mapping[tuple[str, str], float] | None = None,
                   link_load: Mapping[str, int] | None = None, block_tokens: int = 512,
                   kv_bytes_per_token: int = 327_680) -> Snapshot:
    """An immutable snapshot of ``workers`` on the fabric of ``distance``."""
    return Snapshot(tuple(workers), domain_arrays(distance, workers),
                    dict(preferred_pairs or {}), dict(link_load or {}), block_tokens,
                    kv_bytes_per_token)


def load_state(path: str | Path) -> StateDocument:
    """Read a state document (YAML or JSON) with every shape error and its path."""
    return validate(StateDocument, load_yaml(path), str(path))


def read_pairings(path: str | Path) -> dict[tuple[str, str], float]:
    """Pairings of a placement result file (its ``pairings`` list)."""
    doc = validate(PlacementPairings, load_yaml(path), str(path))
    return {(p.prefill, p.decode): p.weight for p in doc.pairings}


def _check(doc: StateDocument, distance: DistanceModel, pairs: Mapping[tuple[str, str], float],
           ) -> list[Issue]:
    issues: list[Issue] = []
    seen: set[str] = set()
    known = set(distance.names)
    for i, w in enumerate(doc.workers):
        if w.id in seen:
            issues.append(Issue(f"workers[{i}].id", f"worker {w.id!r} appears twice"))
        seen.add(w.id)
        issues += [Issue(f"workers[{i}].gpus[{j}]", f"GPU {g!r} is not in the fabric")
                   for j, g in enumerate(w.gpus) if g not in known]
        if w.capacity_kv_blocks is not None and w.free_kv_blocks > w.capacity_kv_blocks:
            issues.append(Issue(f"workers[{i}].free_kv_blocks", "exceeds capacity_kv_blocks"))
    for i, (p, d) in enumerate(pairs):
        issues += [Issue(f"preferred_pairs[{i}]", f"unknown worker {name!r}")
                   for name in (p, d) if name not in seen]
    return issues


def _kv_bytes(doc: StateDocument, source: str) -> int:
    if doc.kv_bytes_per_token is not None:
        return doc.kv_bytes_per_token
    if doc.model is None:
        raise ValidationError(source, [Issue("kv_bytes_per_token",
                                             "give kv_bytes_per_token or a model")])
    try:
        return kv_bytes_per_token(load_models().get(doc.model))
    except NotFoundError as exc:
        raise ValidationError(source, [Issue("model", str(exc))]) from exc


def snapshot_from_state(doc: StateDocument, distance: DistanceModel, *, source: str = "<state>",
                        pairings: Mapping[tuple[str, str], float] | None = None) -> Snapshot:
    """The snapshot a state document describes (``pairings`` add to its own)."""
    pairs = {(p.prefill, p.decode): p.weight for p in doc.preferred_pairs}
    pairs.update(pairings or {})
    issues = _check(doc, distance, pairs)
    if issues:
        raise ValidationError(source, issues)
    workers = [Worker(w.id, w.role, tuple(w.gpus), w.queued_tokens, w.running_requests,
                      w.max_running_requests, w.free_kv_blocks,
                      w.capacity_kv_blocks if w.capacity_kv_blocks is not None
                      else w.free_kv_blocks + len(w.cached_blocks), w.prefill_tokens_per_s,
                      len(w.cached_blocks))
               for w in doc.workers]
    return build_snapshot(distance, workers, preferred_pairs=pairs, link_load=doc.link_load,
                          block_tokens=doc.block_tokens,
                          kv_bytes_per_token=_kv_bytes(doc, source))


def index_from_state(doc: StateDocument) -> PrefixIndex:
    """A prefix index holding each worker's ``cached_blocks`` (GPU tier, the doc's model)."""
    index = PrefixIndex()
    for w in doc.workers:
        index.resync(w.id, w.cached_blocks, model=doc.model)
    return index
