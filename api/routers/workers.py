"""Workers: registration with a lease, heartbeats, removal, listing, the job channels
(a long-poll, and a stream that stays open)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from api.deps import Coordinator, Prefix, RuntimeDep
from api.load import register_capacity
from api.runtime import Runtime
from scheduler.prefix import PrefixIndex, parse_event
from scheduler.state.base import WorkerEntry
from scheduler.state.reservations import WorkerLoad
from scheduler.transfer.coordinator import TransferCoordinator
from scheduler.transfer.plan import Lease, TransferJob, TransferReport, WorkerRegistration
from topology.errors import ConflictError, InputError, NotFoundError, ToposchedError

router = APIRouter(prefix="/v1", tags=["workers"])
log = logging.getLogger(__name__)


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


class PendingTransfers(BaseModel):
    """How many transfers with the worker on either side have not ended."""

    pending: int


@router.get("/sidecars/{name:path}/pending")
async def pending_transfers(
        name: str, coordinator: Coordinator,
        created_before: Annotated[float | None, Query(
            description="count only transfers created before this unix time")] = None,
) -> PendingTransfers:
    """A draining sidecar asks this before it deregisters: a READ's source is not told
    of the transfer until it ended, and its memory must stay registered until then
    (``created_before``: the moment it started draining; later transfers fail when it
    deregisters, so that a busy worker's drain ends)."""
    await coordinator.store.get_worker(name)  # 404 for an unknown worker
    records = await coordinator.store.transfers_of(name)
    if created_before is not None:
        records = [r for r in records if r.created_at < created_before]
    return PendingTransfers(pending=len(records))


class Draining(BaseModel):
    """A worker marked draining: no new transfer uses it; its pending ones go on."""

    worker: str
    epoch: int = Field(description="the registration epoch that is draining")
    draining: bool = True


@router.post("/sidecars/{name:path}/drain")
async def drain(name: str, coordinator: Coordinator) -> Draining:
    """A sidecar that starts draining says so first: from then on a new transfer that
    would use its worker on either side is refused (409), while its pending transfers
    go on. Idempotent; 404 for an unknown worker; a new registration clears it."""
    entry = await coordinator.drain(name)
    return Draining(worker=name, epoch=entry.lease.epoch)


#: Media type of the job stream: one JSON job per line (empty lines keep it alive).
JOB_STREAM_MEDIA_TYPE = "application/x-ndjson"


@router.get("/sidecars/{name:path}/jobs/stream", response_class=StreamingResponse)
async def stream_jobs(name: str, request: Request, coordinator: Coordinator,
                      keepalive_s: Annotated[float, Query(gt=0)] = 5.0) -> StreamingResponse:
    """The job stream: one response that stays open, a JSON job per line written the
    moment it is queued, an empty line after ``keepalive_s`` (capped) without jobs.

    404 at once for a worker that is not registered; the stream ends when its lease
    lapses or it is removed (the sidecar registers again and reopens it).
    """
    cap: float = request.app.state.settings.long_poll_max_s
    first = await coordinator.next_job_texts(name, 0)  # 404 here, before the stream starts
    return _JobStream(_job_lines(coordinator, name, first, min(keepalive_s, cap)),
                      media_type=JOB_STREAM_MEDIA_TYPE,
                      headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class _JobStream(StreamingResponse):
    """A streaming response that stops the moment its client goes away: a stream left
    waiting for jobs after its sidecar reconnected would take (and lose) the next one."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-write
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


#: How long the job stream holds back a batch of nothing but ``complete`` jobs to write
#: the next ones with it (nobody waits for them: a passive target only reuses blocks).
COMPLETE_LINGER_S = 0.01
#: Most jobs held back that way (written at once when reached).
COMPLETE_BATCH_MAX = 64
#: How a ``complete`` job's JSON starts (the store keeps ``model_dump_json`` text).
_COMPLETE_PREFIX = '{"kind":"complete"'


def _lazy(texts: list[str]) -> bool:
    """True when every job of ``texts`` is a ``complete``."""
    return all(text.startswith(_COMPLETE_PREFIX) for text in texts)


async def _with_later_completes(coordinator: TransferCoordinator, name: str,
                                texts: list[str]) -> list[str]:
    """``texts`` (all ``complete`` jobs) and the jobs queued within ``COMPLETE_LINGER_S``
    after them: up to ``COMPLETE_BATCH_MAX``, and no longer than the first other job."""
    give_up = coordinator.now() + COMPLETE_LINGER_S
    while len(texts) < COMPLETE_BATCH_MAX:
        left = give_up - coordinator.now()
        if left <= 0:
            break
        more = await coordinator.next_job_texts(name, left)
        texts = [*texts, *more]
        if not _lazy(more):
            break
    return texts


async def _job_lines(coordinator: TransferCoordinator, name: str, texts: list[str],
                     keepalive_s: float) -> AsyncIterator[bytes]:
    """The stream's body: queued jobs as they come, all those queued at once in one
    write (one chunk); ``complete`` jobs alone wait up to ``COMPLETE_LINGER_S`` for
    company."""
    while True:
        if texts:
            sent_at = coordinator.now()  # stamped after the write, with the time it began
            yield "".join(f"{text}\n" for text in texts).encode()
            await coordinator.delivered(texts, sent_at)
        else:
            yield b"\n"
        try:
            texts = await coordinator.next_job_texts(name, keepalive_s)
            if texts and _lazy(texts):
                texts = await _with_later_completes(coordinator, name, texts)
        except NotFoundError:
            return  # lease lapsed or removed: the sidecar registers again


#: How a release line of the report stream starts (``{"release": PLAN_ID}``).
RELEASE_LINE_PREFIX = b'{"release"'

#: Path suffix of the report stream (exempt from the whole-body size and time limits;
#: each line is held to ``max_body_bytes``).
REPORT_STREAM_SUFFIX = "/reports/stream"


class ReportsTaken(BaseModel):
    """What a report stream delivered when it ended: lines taken (reports recorded,
    KV event batches applied) and refused."""

    taken: int
    refused: int


@router.post("/sidecars/{name:path}/reports/stream")
async def stream_reports(name: str, request: Request, coordinator: Coordinator,
                         prefix: Prefix, runtime: RuntimeDep) -> ReportsTaken:
    """The report stream: a request body that stays open (chunked), one line per item,
    each taken as it arrives: a JSON ``TransferReport`` object is recorded as ``POST
    /v1/transfers/{id}/report`` would record it, a JSON list of KV events is applied as
    ``POST /v1/kv-events`` would apply it, ``{"release": PLAN_ID}`` ends the request
    that used a received transfer's blocks as ``POST /v1/transfers/{id}/release`` with
    this worker would — without a request per report, batch or release.

    Everything must come from ``name`` (``worker`` fields); a line that is not a valid
    report or batch of this worker is refused and logged (the stream goes on). Answers
    when the sidecar ends the body, with the counts.
    """
    limit: int = request.app.state.settings.max_body_bytes
    taken = refused = 0
    pending = b""
    chunks = request.stream()
    while True:
        try:
            chunk = await anext(chunks)
        except (StopAsyncIteration, ClientDisconnect):  # ended, or the sidecar went away
            break
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) > limit:
            raise InputError(f"a line of the report stream is longer than {limit} bytes")
        for line in lines:
            if not line.strip():
                continue
            head = line.lstrip()
            if head.startswith(b"["):
                ok = await _take_events(prefix, runtime, name, line)
            elif head.startswith(RELEASE_LINE_PREFIX):
                ok = await _take_release(coordinator, runtime, name, line)
            else:
                ok = await _take_report(coordinator, name, line)
            taken, refused = taken + ok, refused + (not ok)
    return ReportsTaken(taken=taken, refused=refused)


async def _take_report(coordinator: TransferCoordinator, name: str, line: bytes) -> bool:
    try:
        report = TransferReport.model_validate_json(line)
        if report.worker != name:
            raise ValueError(f"a report of {report.worker!r} on the stream of {name!r}")
        await coordinator.report(report.plan_id, report)
    except (PydanticError, ValueError, ToposchedError) as exc:
        log.warning("report stream of %s: refused a report: %s", name, exc)
        return False
    return True


async def _take_release(coordinator: TransferCoordinator, runtime: Runtime, name: str,
                        line: bytes) -> bool:
    try:
        item = json.loads(line)
        if not (isinstance(item, dict) and item.keys() == {"release"}
                and isinstance(item["release"], str)):
            raise ValueError('a release line is {"release": PLAN_ID} and nothing else')
        plan_id: str = item["release"]
        await runtime.release_transfer(coordinator, plan_id, name)
    except (ValueError, ToposchedError) as exc:
        log.warning("report stream of %s: refused a release: %s", name, exc)
        return False
    return True


async def _take_events(prefix: PrefixIndex, runtime: Runtime, name: str,
                       line: bytes) -> bool:
    try:
        items = json.loads(line)
        events = [parse_event(item, source=f"report stream of {name}[{i}]")
                  for i, item in enumerate(items)]
        others = {event.worker for event in events} - {name}
        if others:
            raise ValueError(f"KV events of {sorted(others)} on the stream of {name!r}")
    except (ValueError, TypeError, ToposchedError) as exc:
        log.warning("report stream of %s: refused KV events: %s", name, exc)
        return False
    for event in events:
        prefix.apply(event)
    await runtime.publish_events(events)
    return True
