"""Placement as a service: what to place, the placement in force, and solve jobs.

Solves run in a worker thread (``asyncio.to_thread``): OR-Tools must never block the
event loop. Each job keeps the solver's progress lines, its result or its error.

A job runs on the replica that started it; :class:`SharedJobs` publishes its record to
the shared documents (so every replica answers for it) and numbers jobs from a shared
counter (so ids stay unique across replicas and restarts).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.capacity import Workload
from scheduler.placement import Placement, PlacementRequest, SolverOptions, check, prepare
from scheduler.state.docs import ABSENT, SharedDocs
from scheduler.state.reservations import StoreUnavailableError
from topology.distance import DistanceModel
from topology.errors import ConflictError, ToposchedError
from topology.spec import FabricSpec

log = logging.getLogger(__name__)
JobStatus = Literal["queued", "running", "done", "failed"]
#: Finished jobs kept for GET /v1/placement/jobs/{id}; the oldest are forgotten first.
MAX_JOBS = 256
MAX_PROGRESS_LINES = 200
#: Shared document whose version counts the jobs ever started (the next id's number).
JOB_IDS = "placement-job-ids"
#: Compare-and-set attempts at the job counter before giving up (409).
MAX_ID_TRIES = 16
_JOB_ID = re.compile(r"place-([1-9][0-9]{0,17})")


class PlacementTarget(BaseModel):
    """What to place: the workload, TP sizes, optional counts and exclusions."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    workload: Workload
    tp_prefill: int = Field(ge=1, le=64)
    tp_decode: int = Field(ge=1, le=64)
    gpu_type: str | None = None
    prefill: int | None = Field(default=None, ge=1, le=100_000)
    decode: int | None = Field(default=None, ge=1, le=100_000)
    exclude: tuple[str, ...] = Field(default=(), max_length=10_000)
    time_limit_s: float = Field(default=10.0, gt=0, le=600)

    def request(self, fabric: FabricSpec, current: Placement | None = None) -> PlacementRequest:
        """The solver request for this target on ``fabric``."""
        return PlacementRequest(
            fabric=fabric, workload=self.workload, tp_prefill=self.tp_prefill,
            tp_decode=self.tp_decode, gpu_type=self.gpu_type, prefill=self.prefill,
            decode=self.decode, exclude=self.exclude, current=current,
            options=SolverOptions(time_limit_s=self.time_limit_s))


class CurrentPlacement(BaseModel):
    """The placement in force, what it was asked for, and where it came from."""

    model_config = ConfigDict(frozen=True)
    placement: Placement
    target: PlacementTarget
    origin: Literal["solve", "apply", "re-solve"]
    applied_at: float


class PlacementJob(BaseModel):
    """A solve job as the API reports it."""

    model_config = ConfigDict(frozen=True)
    id: str
    kind: Literal["solve", "re-solve"]
    status: JobStatus
    reason: str | None = None
    progress: tuple[str, ...] = ()
    result: Placement | None = None
    error: str | None = None
    created_at: float
    finished_at: float | None = None


#: Attempts (one flush interval apart) to publish a finished job's final record.
FINAL_PUBLISH_TRIES = 20


class JobBook:
    """Jobs by id (bounded); records are replaced, never mutated in place."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, PlacementJob] = OrderedDict()

    def new(self, job_id: str, kind: Literal["solve", "re-solve"],
            reason: str | None = None) -> PlacementJob:
        """Record a queued job under ``job_id``."""
        job = PlacementJob(id=job_id, kind=kind, status="queued", reason=reason,
                           created_at=time.time())
        self._jobs[job.id] = job
        while len(self._jobs) > MAX_JOBS:
            self._jobs.popitem(last=False)
        return job

    def get(self, job_id: str) -> PlacementJob | None:
        """The job ``job_id``, or None once forgotten or never made."""
        return self._jobs.get(job_id)

    def all(self) -> list[PlacementJob]:
        """Every job kept, oldest first."""
        return list(self._jobs.values())

    def update(self, job_id: str, **fields: object) -> PlacementJob:
        """Replace a job's record with ``fields`` changed."""
        job = self._jobs[job_id].model_copy(update=fields)
        self._jobs[job_id] = job
        return job

    def progress(self, job_id: str, line: str) -> None:
        """Append a progress line (called from the solver thread; bounded)."""
        job = self._jobs.get(job_id)
        if job is not None:
            lines = (*job.progress, line)[-MAX_PROGRESS_LINES:]
            self.update(job_id, progress=lines)


def violations(target: PlacementTarget, placement: Placement, fabric: FabricSpec,
               distance: DistanceModel) -> tuple[str, ...]:
    """Why ``placement`` does not hold on ``fabric`` (empty when it does)."""
    known = set(distance.names)
    gone = [f"instance {i.id}: GPU {g} is not in the fabric"
            for i in placement.instances for g in i.gpus if g not in known]
    if gone:
        return tuple(gone)
    try:
        return check(prepare(target.request(fabric), distance), placement)
    except ToposchedError as exc:
        return (str(exc),)


def surviving(placement: Placement, distance: DistanceModel) -> Placement:
    """``placement`` without the instances (and pairings) whose GPUs left the fabric."""
    known = set(distance.names)
    kept = tuple(i for i in placement.instances if all(g in known for g in i.gpus))
    ids = {i.id for i in kept}
    pairs = tuple(p for p in placement.pairings if p.prefill in ids and p.decode in ids)
    return placement.model_copy(update={"instances": kept, "pairings": pairs})


async def run_job(book: JobBook, job_id: str, request: PlacementRequest,
                  distance: DistanceModel, failed: Sequence[str] = ()) -> Placement | None:
    """Run one solve in a worker thread, recording progress, result or error."""
    book.update(job_id, status="running")

    def solve() -> Placement:
        from scheduler.placement import place, replace_after_failure
        note = lambda line: book.progress(job_id, line)  # noqa: E731
        if request.current is not None:
            return replace_after_failure(request, failed, dm=distance, progress=note)
        return place(request, dm=distance, progress=note)

    try:
        result = await asyncio.to_thread(solve)
    except ToposchedError as exc:
        book.update(job_id, status="failed", error=str(exc), finished_at=time.time())
        return None
    except Exception:  # a solver crash must not kill the service; the job says so
        log.exception("placement job %s crashed", job_id)
        book.update(job_id, status="failed", error="internal error (see the server log)",
                    finished_at=time.time())
        return None
    book.update(job_id, status="done", result=result, finished_at=time.time())
    return result


def _doc(job_id: str) -> str:
    return f"placement-job:{job_id}"


class SharedJobs:
    """Placement jobs as every replica sees them.

    Jobs this replica runs live in :attr:`book` (fresh to the last progress line) and
    are published to the shared documents when created, and then every ``flush_s``
    while their record changes, up to the final one; other replicas read them from
    there. The newest :data:`MAX_JOBS` are kept: making job ``n`` drops job
    ``n - MAX_JOBS``.
    """

    def __init__(self, docs: SharedDocs, flush_s: float = 0.5) -> None:
        self.book = JobBook()
        self._docs = docs
        self._flush_s = flush_s
        self._count = ABSENT
        #: Version and record last published per running job (version -1: dropped).
        self._published: dict[str, tuple[int, PlacementJob]] = {}

    async def new(self, kind: Literal["solve", "re-solve"],
                  reason: str | None = None) -> PlacementJob:
        """Record and publish a queued job under the next shared number."""
        number = await self._next_number()
        job = self.book.new(f"place-{number}", kind, reason)
        try:
            await self._publish(job.id)
            if number > MAX_JOBS:
                await self._docs.delete(_doc(f"place-{number - MAX_JOBS}"))
        except StoreUnavailableError:  # the caller gets 503; the record says why here
            self.book.update(job.id, status="failed", error="state store unavailable",
                             finished_at=time.time())
            raise
        return job

    async def _next_number(self) -> int:
        for _ in range(MAX_ID_TRIES):
            number = await self._docs.put(JOB_IDS, "", self._count)
            if number is not None:
                self._count = number
                return number
            self._count = (await self._docs.versions([JOB_IDS]))[JOB_IDS]
        raise ConflictError("placement jobs are being started too fast to number; retry")

    async def get(self, job_id: str) -> PlacementJob | None:
        """The job ``job_id`` (run here, or published by another replica), or None."""
        job = self.book.get(job_id)
        if job is not None or not _JOB_ID.fullmatch(job_id):
            return job
        found = await self._docs.get(_doc(job_id))
        return PlacementJob.model_validate_json(found[1]) if found else None

    async def all(self) -> list[PlacementJob]:
        """The newest :data:`MAX_JOBS` jobs of every replica, oldest first."""
        count = (await self._docs.versions([JOB_IDS]))[JOB_IDS]
        ids = [f"place-{n}" for n in range(max(1, count - MAX_JOBS + 1), count + 1)]
        found = await self._docs.get_many([_doc(job_id) for job_id in ids])
        jobs = []
        for job_id in ids:
            job = self.book.get(job_id)
            if job is None and _doc(job_id) in found:
                job = PlacementJob.model_validate_json(found[_doc(job_id)][1])
            if job is not None:
                jobs.append(job)
        return jobs

    async def run(self, job_id: str, request: PlacementRequest,
                  distance: DistanceModel) -> Placement | None:
        """:func:`run_job` here, publishing the record while it runs and when it ends."""
        task = asyncio.ensure_future(run_job(self.book, job_id, request, distance))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self._flush_s)
                await self._publish_quietly(job_id)
            for _ in range(FINAL_PUBLISH_TRIES):  # the end must reach the other replicas
                if await self._publish_quietly(job_id):
                    break
                await asyncio.sleep(self._flush_s)
        finally:
            self._published.pop(job_id, None)
        return task.result()

    async def _publish_quietly(self, job_id: str) -> bool:
        """Publish; False (logged) when the store is unavailable."""
        try:
            await self._publish(job_id)
        except StoreUnavailableError as exc:  # the next flush tries again
            log.warning("could not publish placement job %s: %s", job_id, exc.detail)
            return False
        return True

    async def _publish(self, job_id: str) -> None:
        job = self.book.get(job_id)
        held = self._published.get(job_id)
        if job is None or (held is not None and (held[1] is job or held[0] < 0)):
            return
        version = await self._docs.put(_doc(job_id), job.model_dump_json(),
                                       held[0] if held else ABSENT)
        # None: newer jobs dropped this one; writing it again would bring it back
        self._published[job_id] = (-1 if version is None else version, job)
