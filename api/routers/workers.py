"""Workers: registration with a lease, heartbeats, removal, listing, the job long-poll."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from api.deps import Coordinator, Prefix, RuntimeDep
from api.load import register_capacity
from scheduler.state.base import WorkerEntry
from scheduler.state.reservations import WorkerLoad
from scheduler.transfer.plan import Lease, TransferJob, WorkerRegistration
from topology.errors import ConflictError, NotFoundError

router = APIRouter(prefix="/v1", tags=["workers"])


class JobBatch(BaseModel):
    """Jobs for one sidecar, possibly none (the long-poll timed out)."""

    jobs: list[TransferJob]


@router.post("/workers", status_code=201)
async def register_worker(reg: WorkerRegistration, coordinator: Coordinator,
                          prefix: Prefix, runtime: RuntimeDep) -> Lease:
    """Register (or re-register) a worker; returns its lease and epoch."""
    lease = await coordinator.register(reg)
    runtime.remember_worker(reg)
    await register_capacity(runtime.loads, reg.name)
    prefix.remove_worker(reg.name)  # its cache restarts empty, sequence numbers from 1
    return lease


@router.post("/workers/{name:path}/heartbeat")
async def heartbeat(name: str, coordinator: Coordinator) -> Lease:
    """Renew a worker's lease (404 once it lapsed: register again)."""
    return await coordinator.store.heartbeat(name)


@router.delete("/workers/{name:path}", status_code=204)
async def remove_worker(name: str, coordinator: Coordinator, prefix: Prefix,
                        runtime: RuntimeDep) -> Response:
    """Remove a worker; its pending transfers fail and peers are told to recompute."""
    await coordinator.deregister(name)
    prefix.remove_worker(name)
    await runtime.loads.drop_load(name)
    return Response(status_code=204)


@router.get("/workers")
async def list_workers(coordinator: Coordinator) -> list[WorkerEntry]:
    """Every live worker with its lease and free block count."""
    return await coordinator.store.list_workers()


class FreedBlocks(BaseModel):
    """KV blocks a worker's engine evicted: the scheduler may allocate them again."""

    blocks: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=1 << 20)
    epoch: int | None = Field(default=None, ge=1, description="the registration epoch the "
                              "blocks belong to (recommended: a release that arrives after "
                              "the worker registered again is refused, 409)")


@router.post("/workers/{name:path}/free-blocks", status_code=204)
async def free_blocks(name: str, body: FreedBlocks, coordinator: Coordinator) -> Response:
    """Return evicted blocks to the worker's free list (404 for an unknown worker)."""
    await coordinator.store.get_worker(name)
    if not await coordinator.store.release_blocks(name, body.blocks, body.epoch):
        raise ConflictError(f"worker {name!r} is no longer at epoch {body.epoch}: its "
                            "blocks started free when it registered again")
    return Response(status_code=204)


@router.get("/workers/{name:path}/load")
async def worker_load(name: str, runtime: RuntimeDep) -> WorkerLoad:
    """A worker's reserved load and capacity."""
    load = (await runtime.loads.loads()).get(name)
    if load is None:
        raise NotFoundError("worker", name, "it has no load record: register it first")
    return load


@router.get("/sidecars/{name:path}/jobs")
async def poll_jobs(name: str, request: Request, coordinator: Coordinator,
                    wait_s: Annotated[float, Query(ge=0)] = 10.0) -> JobBatch:
    """Long-poll: answers at the first queued job or after ``wait_s`` (capped)."""
    cap: float = request.app.state.settings.long_poll_max_s
    return JobBatch(jobs=await coordinator.take_jobs(name, min(wait_s, cap)))
