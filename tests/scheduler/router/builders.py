"""Builders for router and policy tests: workers on the small synthetic fabric."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from policies.profile import Policy, resolve_policy
from policies.registry import default_registry
from policies.snapshot import CycleContext, RequestView, Role, Snapshot, Worker
from scheduler.prefix import PrefixIndex
from scheduler.router.router import Router
from scheduler.router.snapshot import build_snapshot
from tests.topology.builders import small_fabric
from topology.distance import DistanceModel

#: GPUs of the small fabric (2 zones x 2 pods x 2 racks x 2 hosts x 8 GPUs), by role.
SOURCE = "z0-p0-r0-h00/gpu0"
SAME_RAIL = "z0-p0-r1-h01/gpu0"        # same rail leaf as SOURCE, other rack
SAME_RAIL_2 = "z0-p0-r1-h00/gpu0"      # another host on the same rail leaf
CROSS_ZONE = "z1-p0-r0-h00/gpu0"
NVLINK_PEER = "z0-p0-r0-h00/gpu5"
KV_BYTES = 327_680                      # Llama-3-70B fp16
BLOCK = 16


@lru_cache(maxsize=1)
def fabric() -> DistanceModel:
    """The distance model of the small fabric (built once per test session)."""
    return DistanceModel(small_fabric())


def worker(wid: str, role: Role | str = Role.DECODE, gpu: str = SAME_RAIL,
           **overrides: Any) -> Worker:
    """A worker with roomy KV space and no load unless overridden."""
    fields: dict[str, Any] = {"free_kv_blocks": 100_000, "capacity_kv_blocks": 100_000}
    fields.update(overrides)
    gpus = tuple(fields.pop("gpus", (gpu,)))
    return Worker(wid, Role(role), gpus, **fields)


def snapshot(workers: Iterable[Worker], **overrides: Any) -> Snapshot:
    """A snapshot on the small fabric with 16-token blocks of Llama-3-70B KV."""
    fields: dict[str, Any] = {"block_tokens": BLOCK, "kv_bytes_per_token": KV_BYTES}
    fields.update(overrides)
    return build_snapshot(fabric(), list(workers), **fields)


def index_with(cached: Mapping[str, list[int]]) -> PrefixIndex:
    """A prefix index where each worker holds the given chain."""
    index = PrefixIndex()
    for name, chain in cached.items():
        index.resync(name, chain)
    return index


def policy(name: str = "fabric-cost", **handler_params: Any) -> Policy:
    """A packaged policy (handler parameters of fabric-cost may be overridden)."""
    built = resolve_policy(name, default_registry())
    if not handler_params:
        return built
    from policies.builtins.fabric_cost import FabricCostHandler, FabricCostParams

    params = FabricCostParams(**handler_params)
    return Policy(built.name, built.description, FabricCostHandler("fabric-cost-handler",
                                                                   params), built.profiles)


def router(name: str = "fabric-cost", cached: Mapping[str, list[int]] | None = None,
           **handler_params: Any) -> Router:
    """A router with a packaged policy over the small fabric."""
    return Router(fabric(), policy(name, **handler_params), index=index_with(cached or {}))


def context(snap: Snapshot, hashes: Iterable[int] = (1, 2, 3, 4),
            cached: Mapping[str, int] | None = None, *, seed: int = 0, sequence: int = 0,
            prompt_tokens: int | None = None, **request: Any) -> CycleContext:
    """A cycle context with the given cached prefix lengths per worker."""
    chain = tuple(hashes)
    array = np.zeros(len(snap.workers), dtype=np.int64)
    for name, blocks in (cached or {}).items():
        array[snap.position[name]] = blocks
    array.flags.writeable = False
    view = RequestView(request.pop("id", "r1"), chain, prompt_tokens or len(chain) * BLOCK,
                       **request)
    cost = Router(fabric(), policy()).cost_model(snap)
    return CycleContext(view, snap, array, cost, seed, sequence)


def chain(n: int, start: int = 1) -> list[int]:
    """A block chain of ``n`` distinct hashes."""
    return list(range(start, start + n))
