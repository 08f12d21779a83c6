"""Load reservations: read, renew, release (a route's load, held until its request ends)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import RuntimeDep
from scheduler.state.reservations import LoadItem, Reservation

router = APIRouter(prefix="/v1", tags=["reservations"])
WorkerName = Annotated[str, Field(min_length=1, max_length=256)]


class ReleaseRequest(BaseModel):
    """Which part of a reservation ends; every part when ``workers`` is omitted."""

    model_config = ConfigDict(extra="forbid")
    workers: list[WorkerName] | None = Field(
        default=None, max_length=64, description="release only the load on these workers "
                                                 "(e.g. the prefill worker once it is done)")
    landed: bool = Field(default=True, description="with ``workers``: the request's KV is on "
                         "its decode worker now (or never will be), so the KV blocks promised "
                         "there are given back too; false keeps them until a later release")


class Released(BaseModel):
    """What a release gave back: empty when the reservation had ended already."""

    released: list[LoadItem]


class RenewRequest(BaseModel):
    """A new lifetime, counted from now."""

    model_config = ConfigDict(extra="forbid")
    ttl_s: float | None = Field(default=None, gt=0, le=86_400,
                                description="default: the service's reservation_ttl_s")


@router.get("/reservations/{reservation_id}")
async def get_reservation(reservation_id: str, runtime: RuntimeDep) -> Reservation:
    """An open reservation (404 once it was released or expired)."""
    return await runtime.loads.get_reservation(reservation_id)


@router.post("/reservations/{reservation_id}/release")
async def release_reservation(reservation_id: str, runtime: RuntimeDep,
                              body: Annotated[ReleaseRequest | None, Body()] = None
                              ) -> Released:
    """The request ended (or left the named workers): give its load back.

    Safe to call more than once and from any replica: load is given back once.
    """
    workers = body.workers if body is not None else None
    landed = body.landed if body is not None else True
    return Released(released=await runtime.loads.close_reservation(reservation_id, workers,
                                                                   landed=landed))


@router.post("/reservations/{reservation_id}/renew")
async def renew_reservation(reservation_id: str, request: Request, runtime: RuntimeDep,
                            body: Annotated[RenewRequest | None, Body()] = None
                            ) -> Reservation:
    """Keep a long request's load reserved: its lifetime restarts (404 once ended)."""
    ttl_s = body.ttl_s if body is not None and body.ttl_s is not None else \
        request.app.state.settings.reservation_ttl_s
    return await runtime.loads.renew_reservation(reservation_id, ttl_s)
