"""Routing over live state: registered workers → snapshot → decision → transfer plan.

The snapshot is built from the coordinator's store (registrations carry role, GPUs,
model and free blocks) before the scoring cycle; the policy itself stays pure.
Per-worker locality arrays depend only on the workers' GPUs and the fabric, so they
are cached until either changes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.snapshot import Role, Snapshot, Worker
from scheduler.kv import kv_bytes_per_token
from scheduler.models_config import load_models
from scheduler.router.router import Decision, Router
from scheduler.router.snapshot import domain_arrays
from scheduler.state.base import WorkerEntry
from scheduler.transfer.coordinator import TransferCoordinator, TransferRequest
from scheduler.transfer.plan import WorkerRegistration
from topology.distance import DistanceModel
from topology.errors import NotFoundError
from topology.spec import FabricSpec

#: Tokens per KV block when hashing token ids (the state document's default).
BLOCK_TOKENS = 512
#: KV bytes per token when the request names no known model (Llama-3-70B fp16).
DEFAULT_KV_BYTES_PER_TOKEN = 327_680


@dataclass(frozen=True)
class Fabric:
    """One fabric and everything derived from it; replaced as a whole on every change."""

    spec: FabricSpec
    distance: DistanceModel
    router: Router
    #: GPU names of the fabric, for membership tests on the request path.
    known: frozenset[str]


@functools.lru_cache(maxsize=256)
def kv_bytes_for(model: str | None) -> int:
    """KV bytes per token of ``model`` from the catalog, or the default.

    Cached: the catalog is a YAML file, and parsing it per request cost ~15 ms.
    """
    if model is None:
        return DEFAULT_KV_BYTES_PER_TOKEN
    try:
        return kv_bytes_per_token(load_models().get(model))
    except NotFoundError:
        return DEFAULT_KV_BYTES_PER_TOKEN


def _on_fabric(reg: WorkerRegistration, fabric: Fabric) -> bool:
    return bool(reg.gpus) and all(g in fabric.known for g in reg.gpus)


def _serves(reg: WorkerRegistration, model: str | None) -> bool:
    return model is None or reg.model is None or reg.model == model


def _worker(reg: WorkerRegistration, free_blocks: int) -> Worker:
    return Worker(id=reg.name, role=_ROLES[reg.role], gpus=reg.gpus, free_kv_blocks=free_blocks,
                  capacity_kv_blocks=reg.layout.num_blocks)


def workers_for(entries: Sequence[WorkerEntry], fabric: Fabric,
                model: str | None) -> list[Worker]:
    """Routable workers: on the fabric, serving ``model`` (or any model when unset)."""
    return [_worker(e.registration, e.free_blocks) for e in entries
            if _serves(e.registration, model) and _on_fabric(e.registration, fabric)]


_ROLES = {role.value: role for role in Role}
#: Distinct models whose worker lists are kept (past this, the cache starts over).
MAX_MODELS = 64


def _refresh(entry: WorkerEntry, known: tuple[WorkerEntry, Worker | None] | None,
             fabric: Fabric, model: str | None) -> Worker | None:
    """``entry`` as a routable Worker, reusing the one built for an equal registration."""
    reg = entry.registration
    if known is not None and (known[0].registration is reg or known[0].registration == reg):
        worker = known[1]
        if worker is None or worker.free_kv_blocks == entry.free_blocks:
            return worker
        return _worker(reg, entry.free_blocks)
    if not (_serves(reg, model) and _on_fabric(reg, fabric)):
        return None
    return _worker(reg, entry.free_blocks)


class SnapshotBuilder:
    """Builds snapshots, reusing locality arrays while workers' GPUs and fabric match."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._domains: dict[str, Any] = {}
        #: Per model asked for, per worker name: the entry last seen and its Worker
        #: (None: not routable for that model). Rebuilding 256 Workers per request
        #: cost more than the policy, and between requests usually only two
        #: free-block counts change. A new fabric starts over.
        self._fabric: Fabric | None = None
        self._seen: dict[str | None, dict[str, tuple[WorkerEntry, Worker | None]]] = {}

    def workers(self, entries: Sequence[WorkerEntry], fabric: Fabric,
                model: str | None) -> list[Worker]:
        """The same list as :func:`workers_for`, reusing unchanged Worker objects."""
        if fabric is not self._fabric or len(self._seen) > MAX_MODELS:
            self._fabric, self._seen = fabric, {}
        seen = self._seen.setdefault(model, {})
        if len(seen) > 4 * len(entries) + 1024:  # forget long-gone workers
            seen.clear()
        workers = []
        for entry in entries:
            name = entry.registration.name
            known = seen.get(name)
            if known is None or known[0] is not entry:  # the memory store reuses entries
                known = (entry, _refresh(entry, known, fabric, model))
                seen[name] = known
            if known[1] is not None:
                workers.append(known[1])
        return workers

    def build(self, fabric: Fabric, workers: Sequence[Worker], *, kv_bytes: int,
              pairs: Mapping[tuple[str, str], float]) -> Snapshot:
        """An immutable snapshot of ``workers``."""
        key = (id(fabric), tuple((w.id, w.gpus) for w in workers))
        if key != self._key:
            self._domains = domain_arrays(fabric.distance, workers)
            self._key = key
        return Snapshot(tuple(workers), self._domains, dict(pairs), {}, BLOCK_TOKENS,
                        kv_bytes)


def preferred_pairs(pairings: Sequence[Any], workers: Sequence[Worker]
                    ) -> dict[tuple[str, str], float]:
    """Placement pairings between workers that are registered under the instance ids."""
    names = {w.id for w in workers}
    return {(p.prefill, p.decode): p.weight for p in pairings
            if p.prefill in names and p.decode in names}


async def deliver_plan(coordinator: TransferCoordinator, decision: Decision) -> str | None:
    """Queue the decision's KV transfer for the two sidecars; its plan id (None: nothing
    moves, e.g. local prefill or the decode side holds every block).

    The prompt's blocks on the prefill side are taken from its free list, as the
    coordinator does for the destination: the prefill engine writes them there.
    """
    blocks = decision.transfer.blocks
    src, dst = decision.prefill.worker, decision.decode.worker
    if decision.mode != "disaggregated" or blocks == 0 or src == dst:
        return None
    store = coordinator.store
    src_blocks = await store.allocate_blocks(src, blocks)
    try:
        record = await coordinator.submit(TransferRequest(
            src=src, dst=dst, src_blocks=tuple(src_blocks),
            block_hashes=decision.transfer.block_hashes))
    except BaseException:
        await store.release_blocks(src, src_blocks)
        raise
    return record.plan.plan_id
