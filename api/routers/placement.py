"""Placement: solve jobs (run in a worker thread), the placement in force, applying one."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.placement_jobs import CurrentPlacement, PlacementJob, PlacementTarget
from api.service import Services
from scheduler.placement import Placement
from topology.errors import NotFoundError

reads = APIRouter(prefix="/v1/placement", tags=["placement"])
writes = APIRouter(prefix="/v1/placement", tags=["placement"])


class JobAccepted(BaseModel):
    """A queued solve job; poll ``location`` (on any replica) for its progress and result."""

    model_config = ConfigDict(frozen=True)
    job: PlacementJob
    location: str


class ApplyPlacement(BaseModel):
    """A placement to put in force, and the target it was made for (to validate it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    placement: Placement
    target: PlacementTarget


@writes.post("/solve", status_code=202)
async def solve(target: PlacementTarget, services: Services) -> JobAccepted:
    """Start a solve on the current fabric; its result becomes the placement in force."""
    job = await services.start_solve(target)
    return JobAccepted(job=job, location=f"/v1/placement/jobs/{job.id}")


@reads.get("/jobs/{job_id}")
async def get_job(job_id: str, services: Services) -> PlacementJob:
    """A solve job (started on any replica): status, progress lines, result or error."""
    job = await services.jobs.get(job_id)
    if job is None:
        raise NotFoundError("placement job", job_id)
    return job


@reads.get("/jobs")
async def list_jobs(services: Services) -> list[PlacementJob]:
    """Every job kept (the newest 256, of every replica), oldest first."""
    return await services.jobs.all()


@reads.get("")
async def get_placement(services: Services) -> CurrentPlacement:
    """The placement in force (404 before the first solve or apply)."""
    if services.current is None:
        raise NotFoundError("placement", "current", "POST /v1/placement/solve or PUT one")
    return services.current


@writes.put("")
async def apply_placement(body: ApplyPlacement, services: Services) -> CurrentPlacement:
    """Put a placement in force after checking it on the current fabric (422 otherwise)."""
    return await services.apply_placement(body.placement, body.target, "PUT /v1/placement")
