"""Transfers: submit (plan built server-side), reports, status; KV events."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Coordinator, Prefix, RuntimeDep
from scheduler.prefix import ResyncRequest, parse_event
from scheduler.transfer.coordinator import TransferRequest
from scheduler.transfer.plan import TransferRecord, TransferReport

router = APIRouter(prefix="/v1", tags=["transfers"])


class EventAck(BaseModel):
    """The index took the event; ``resync`` is set when it saw a sequence gap."""

    resync: ResyncRequest | None = None


@router.post("/transfers", status_code=201, response_model=TransferRecord)
async def submit_transfer(request: TransferRequest, coordinator: Coordinator) -> Response:
    """Build, validate and queue a plan; the sidecars' job streams carry it at once."""
    return _record_response(await coordinator.submit(request), 201)


def _record_response(record: TransferRecord, status: int = 200,
                     headers: dict[str, str] | None = None) -> Response:
    """``record`` as JSON, written once: the model is ours and already valid, and a
    second validation of the whole plan would run while a report waits for the loop."""
    return Response(record.model_dump_json(by_alias=True), status_code=status,
                    media_type="application/json", headers=headers)


@router.get("/transfers/{plan_id}", response_model=TransferRecord)
async def get_transfer(plan_id: str, coordinator: Coordinator, request: Request,
                       wait_s: Annotated[float, Query(ge=0)] = 0.0,
                       after: Annotated[int, Query(ge=0)] = 0,
                       ended: bool = False) -> Response:
    """A transfer's plan, state and reports.

    Long-poll with ``wait_s``: answers once the record changed after version ``after``
    (the ``X-Record-Version`` header of a previous answer), or after ``wait_s``; with
    ``ended=true``, only once the transfer is no longer pending (or after ``wait_s``).
    """
    cap: float = request.app.state.settings.long_poll_max_s
    give_up = time.monotonic() + min(wait_s, cap)
    record, version = await coordinator.store.wait_transfer(plan_id, min(wait_s, cap), after)
    while ended and record.state == "pending" and (left := give_up - time.monotonic()) > 0:
        record, version = await coordinator.store.wait_transfer(plan_id, left, version)
    return _record_response(record, headers={"X-Record-Version": str(version)})


@router.post("/transfers/{plan_id}/report", response_model=TransferRecord,
             responses={204: {"description": "recorded (the request asked for "
                                             "`Prefer: return=minimal`)"}})
async def report_transfer(plan_id: str, report: TransferReport, coordinator: Coordinator,
                          prefer: Annotated[str | None, Header()] = None) -> Any:
    """A sidecar's report; moves the transfer to done or failed (and, once, into
    telemetry: the coordinator tells the service when a transfer ends).

    Answers the record, or 204 and nothing with ``Prefer: return=minimal`` (RFC 7240;
    what the sidecar sends: it needs no record back, and writing the whole plan again
    costs more than recording the report).
    """
    record = await coordinator.report(plan_id, report)
    if prefer is not None and "return=minimal" in prefer.replace(" ", "").lower():
        return Response(status_code=204, headers={"Preference-Applied": "return=minimal"})
    return record


class ReleaseTransfer(BaseModel):
    """Who releases: the transfer's destination worker."""

    model_config = ConfigDict(extra="forbid")
    worker: str = Field(min_length=1, max_length=256)


class TransferReleased(BaseModel):
    """Whether the destination blocks went back to the free list now (False: released
    before, the transfer did not end done, or its worker registered again since)."""

    blocks_released: bool


@router.post("/transfers/{plan_id}/release")
async def release_transfer(plan_id: str, body: ReleaseTransfer, coordinator: Coordinator,
                           runtime: RuntimeDep) -> TransferReleased:
    """The destination's request that used this transfer's KV ended: its blocks go back
    to the free list and the rest of the route's load reservation ends."""
    released = await coordinator.release(plan_id, body.worker)
    await runtime.request_ended(await coordinator.store.get_transfer(plan_id))
    return TransferReleased(blocks_released=released)


@router.post("/kv-events")
async def kv_event(body: dict[str, Any] | list[dict[str, Any]], prefix: Prefix,
                   runtime: RuntimeDep) -> EventAck:
    """KV events (block_stored / block_removed / all_blocks_cleared), one or a list in order.

    Every event is validated before any is applied; ``resync`` reports the first gap.
    The events are applied here at once and shared with the other replicas through
    the store's KV-event log.
    """
    events = [parse_event(item, source=f"POST /v1/kv-events[{i}]")
              for i, item in enumerate(body if isinstance(body, list) else [body])]
    gaps = [prefix.apply(event) for event in events]
    await runtime.publish_events(events)
    return EventAck(resync=next((gap for gap in gaps if gap is not None), None))
