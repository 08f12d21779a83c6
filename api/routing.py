"""Routing over live state: registered workers → snapshot → decision → transfer plan.

The snapshot is built from the coordinator's store (registrations carry role, GPUs,
model and free blocks) before the scoring cycle; the policy itself stays pure.
Per-worker locality arrays depend only on the workers' GPUs and the fabric, so they
are cached until either changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api.service import Fabric
from policies.snapshot import Role, Snapshot, Worker
from scheduler.kv import kv_bytes_per_token
from scheduler.models_config import load_models
from scheduler.router.router import Decision
from scheduler.router.snapshot import domain_arrays
from scheduler.state.base import WorkerEntry
from scheduler.transfer.coordinator import TransferCoordinator, TransferRequest
from topology.errors import NotFoundError

#: Tokens per KV block when hashing token ids (the state document's default).
BLOCK_TOKENS = 512
#: KV bytes per token when the request names no known model (Llama-3-70B fp16).
DEFAULT_KV_BYTES_PER_TOKEN = 327_680


def kv_bytes_for(model: str | None) -> int:
    """KV bytes per token of ``model`` from the catalog, or the default."""
    if model is None:
        return DEFAULT_KV_BYTES_PER_TOKEN
    try:
        return kv_bytes_per_token(load_models().get(model))
    except NotFoundError:
        return DEFAULT_KV_BYTES_PER_TOKEN


def workers_for(entries: Sequence[WorkerEntry], fabric: Fabric,
                model: str | None) -> list[Worker]:
    """Routable workers: on the fabric, serving ``model`` (or any model when unset)."""
    known = fabric.known
    workers = []
    for entry in entries:
        reg = entry.registration
        if not reg.gpus or not all(g in known for g in reg.gpus):
            continue
        if model is not None and reg.model is not None and reg.model != model:
            continue
        workers.append(Worker(id=reg.name, role=Role(reg.role), gpus=reg.gpus,
                              free_kv_blocks=entry.free_blocks,
                              capacity_kv_blocks=reg.layout.num_blocks))
    return workers


class SnapshotBuilder:
    """Builds snapshots, reusing locality arrays while workers' GPUs and fabric match."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._domains: dict[str, Any] = {}

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
        record = await coordinator.submit(TransferRequest(src=src, dst=dst,
                                                          src_blocks=tuple(src_blocks)))
    except BaseException:
        await store.release_blocks(src, src_blocks)
        raise
    return record.plan.plan_id
