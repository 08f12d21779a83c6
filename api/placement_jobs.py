"""Placement as a service: what to place, the placement in force, and solve jobs.

Solves run in a worker thread (``asyncio.to_thread``): OR-Tools must never block the
event loop. Each job keeps the solver's progress lines, its result or its error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.capacity import Workload
from scheduler.placement import Placement, PlacementRequest, SolverOptions, check, prepare
from topology.distance import DistanceModel
from topology.errors import ToposchedError
from topology.spec import FabricSpec

log = logging.getLogger(__name__)
JobStatus = Literal["queued", "running", "done", "failed"]
#: Finished jobs kept for GET /v1/placement/jobs/{id}; the oldest are forgotten first.
MAX_JOBS = 256
MAX_PROGRESS_LINES = 200


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


class JobBook:
    """Jobs by id (bounded); records are replaced, never mutated in place."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, PlacementJob] = OrderedDict()
        self._ids = itertools.count(1)

    def new(self, kind: Literal["solve", "re-solve"], reason: str | None = None) -> PlacementJob:
        """Record a queued job."""
        job = PlacementJob(id=f"place-{next(self._ids)}", kind=kind, status="queued",
                           reason=reason, created_at=time.time())
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
