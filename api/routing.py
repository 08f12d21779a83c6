"""Routing over live state: registered workers → snapshot → decision → transfer plan.

The snapshot is built from the coordinator's store (registrations carry role, GPUs,
model and free blocks) before the scoring cycle (:mod:`api.snapshots`); the policy
itself stays pure.
"""

from __future__ import annotations

import functools
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.kv import kv_bytes_per_token
from scheduler.models_config import load_models
from scheduler.router.router import Decision, Router
from scheduler.transfer.coordinator import TransferCoordinator
from scheduler.transfer.plan import TransferRecord
from topology.distance import DistanceModel
from topology.errors import NotFoundError
from topology.spec import FabricSpec

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


def preferred_pairs(pairings: Sequence[Any], names: Container[str]
                    ) -> dict[tuple[str, str], float]:
    """Placement pairings between workers that are registered under the instance ids
    (``names``: the ids of the workers)."""
    if not pairings:
        return {}
    return {(p.prefill, p.decode): p.weight for p in pairings
            if p.prefill in names and p.decode in names}


async def deliver_plan(coordinator: TransferCoordinator, decision: Decision,
                       reservation_id: str | None = None) -> TransferRecord | None:
    """Queue the decision's KV transfer for the two sidecars; its record (None: nothing
    moves, e.g. local prefill or the decode side holds every block).

    The prompt's blocks are taken from the prefill side's free list (its engine writes
    them there) and the decode side's in one store step; the coordinator gives them
    back if the transfer cannot start. ``reservation_id`` (the route's load reservation)
    is kept on the record: its prefill part ends with the transfer.
    """
    blocks = decision.transfer.blocks
    src, dst = decision.prefill.worker, decision.decode.worker
    if decision.mode != "disaggregated" or blocks == 0 or src == dst:
        return None
    return await coordinator.submit_routed(src, dst, blocks, decision.transfer.block_hashes,
                                           reservation_id=reservation_id)
