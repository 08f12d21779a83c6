"""Transfers: submit (plan built server-side), reports, status; KV events."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from api import problems
from api.deps import Coordinator, Prefix, RuntimeDep
from api.security import ASGIApp, BodyLimit, Message, Role, admit_request, admit_scope
from scheduler.prefix import ResyncRequest, parse_event
from scheduler.transfer.coordinator import TransferCoordinator, TransferRequest
from scheduler.transfer.plan import TransferRecord, TransferReport

router = APIRouter(prefix="/v1", tags=["transfers"])


class EventAck(BaseModel):
    """The index took the event; ``resync`` is set when it saw a sequence gap."""

    resync: ResyncRequest | None = None


@router.post("/transfers", status_code=201, response_model=TransferRecord)
async def submit_transfer(request: TransferRequest, coordinator: Coordinator, http: Request,
                          prefer: Annotated[str | None, Header()] = None) -> Response:
    """Build, validate and queue a plan; the sidecars' job streams carry it at once.

    With ``Prefer: wait=SECONDS`` (RFC 7240) the answer (201, the record) waits until
    the transfer ended or the time passed (capped like a long-poll): a submitter that
    would long-poll the record next saves that request. ``X-Record-Version`` then says
    which version it is, for a long-poll after it.
    """
    return await _submitted(coordinator, http, await coordinator.submit(request), prefer)


def prefer_wait(prefer: str | None) -> float | None:
    """The ``wait`` preference of a ``Prefer`` header in seconds (RFC 7240), if it has a
    valid one (a non-negative number)."""
    for item in (prefer or "").split(","):
        name, _, value = item.partition(";")[0].partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            return seconds if 0 <= seconds < float("inf") else None
    return None


async def _submitted(coordinator: TransferCoordinator, request: Request,
                     record: TransferRecord, prefer: str | None) -> Response:
    """The answer to a submission: the record now, or once ended (``Prefer: wait``)."""
    wait_s = prefer_wait(prefer)
    if not wait_s:
        return _record_response(record, 201)
    answer = await _wait_record(coordinator, request, record.plan.plan_id, wait_s, 0, True)
    answer.status_code = 201
    return answer


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
    return await _wait_record(coordinator, request, plan_id, wait_s, after, ended)


async def _wait_record(coordinator: TransferCoordinator, request: Request, plan_id: str,
                       wait_s: float, after: int, ended: bool) -> Response:
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
    released = await runtime.release_transfer(coordinator, plan_id, body.worker)
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


# -- lean routes ---------------------------------------------------------------------
# Submitting a transfer and long-polling its record are the per-transfer calls of
# whoever starts transfers; FastAPI's route matching and dependency solving cost the
# scheduler's loop about as much as the work itself. These plain Starlette routes at
# the head of the app take requests that are plainly valid, with the same token check
# and the same answers; anything else (a body or query FastAPI would refuse or convert
# differently) goes on to the FastAPI routes above, its body replayed.

#: Scope key set on a request handed back to FastAPI: the lean routes step aside.
_FALLBACK = "toposched.lean_fallback"
_WORKERS = frozenset({Role.WORKER})


class _RecordQuery(BaseModel):
    """``GET /v1/transfers/{plan_id}``'s query, with the FastAPI route's constraints."""

    wait_s: Annotated[float, Field(ge=0)] = 0.0
    after: Annotated[int, Field(ge=0)] = 0
    ended: bool = False


class _LeanRoute(Route):
    """A Starlette route for one method that steps aside on anything else: other
    methods (HEAD too: FastAPI's routes answer those, 405 included) and requests
    handed back to FastAPI."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get(_FALLBACK) or scope.get("method") not in self._only:
            return Match.NONE, {}
        return super().matches(scope)

    def __init__(self, path: str, endpoint: Any, method: str) -> None:
        super().__init__(path, endpoint, methods=[method], include_in_schema=False)
        self._only = frozenset({method})


class _HandBack(Response):
    """Not an answer: the request goes on to FastAPI's routes, its body replayed."""

    def __init__(self, body: bytes) -> None:  # no super().__init__: nothing is rendered
        self._replay = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_FALLBACK] = True
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": self._replay, "more_body": False}

        await scope["app"].router(scope, replay, send)


def _plain_submission(content_type: str | None, body: bytes) -> TransferRequest | None:
    """The submission in ``body`` when it is plainly valid; None for anything FastAPI's
    route answers itself (422, 400)."""
    try:
        if content_type != "application/json":
            raise ValueError("not plainly JSON")
        return TransferRequest.model_validate(json.loads(body), from_attributes=True)
    except (ValueError, RecursionError, PydanticError):
        return None


async def _lean_submit(request: Request) -> Response:
    admit_request(request, _WORKERS)
    body = await request.body()
    parsed = _plain_submission(request.headers.get("content-type"), body)
    if parsed is None:
        return _HandBack(body)
    coordinator: TransferCoordinator = request.app.state.coordinator
    return await _submitted(coordinator, request, await coordinator.submit(parsed),
                            request.headers.get("prefer"))


async def _lean_record(request: Request) -> Response:
    admit_request(request, _WORKERS)
    given = {key: value for key, value in request.query_params.items()
             if key in _RecordQuery.model_fields}
    try:
        query = _RecordQuery.model_validate(given)
    except PydanticError:
        return _HandBack(b"")
    coordinator: TransferCoordinator = request.app.state.coordinator
    return await _wait_record(coordinator, request, request.path_params["plan_id"],
                              query.wait_s, query.after, query.ended)


def install_lean_routes(app: FastAPI) -> None:
    """Serve ``POST /v1/transfers`` and ``GET /v1/transfers/{plan_id}`` ahead of FastAPI's
    routing (the routes above stay for the OpenAPI document and for every request the
    lean ones hand back). Needs the routers' dependencies to be the worker-role check
    alone for these two paths (``own_worker`` has nothing to check on them)."""
    app.router.routes[0:0] = [
        _LeanRoute("/v1/transfers", _lean_submit, "POST"),
        _LeanRoute("/v1/transfers/{plan_id}", _lean_record, "GET")]


class SubmitFastPath:
    """ASGI middleware, outside the app's own: ``POST /v1/transfers`` that is plainly
    valid goes straight to the coordinator; anything else on to ``app``, its body
    replayed if it was read.

    It passes the checks of the layers it skips, in their order, and steps aside
    wherever one of them would refuse: a token that :class:`api.security.Authenticate`
    or the worker-role check refuses (nothing read yet), a declared length over the
    body limit, a body that :class:`api.strict_numbers.StrictNumbers` would look at
    (one holding ``true`` or ``false``) or that the lean route hands back. The body is
    read through :class:`api.security.BodyLimit`'s own reader (408/413 while reading,
    as it answers them); the coordinator's errors get the app's exception handlers.
    """

    def __init__(self, app: ASGIApp, owner: FastAPI, max_bytes: int,
                 timeout_s: float | None) -> None:
        """``owner``: the app whose state and exception handlers serve the requests."""
        self.app, self.owner = app, owner
        self.limit = BodyLimit(app, max_bytes=max_bytes, timeout_s=timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") != SUBMIT_PATH or scope["type"] != "http" \
                or scope["method"] != "POST" or scope.get("root_path") \
                or not admit_scope(self.owner.state.auth, scope, _WORKERS) \
                or self.limit.declared_over(scope):
            await self.app(scope, receive, send)
            return
        reader = self.limit.reader(scope, receive, send)
        messages, body = await _read_body(reader.receive)
        if reader.refused:  # 408/413 went out, as BodyLimit sends them
            return
        request = Request(scope)
        parsed = None if b"true" in body or b"false" in body or messages[-1].get(
            "type") != "http.request" else _plain_submission(
            request.headers.get("content-type"), body)
        if parsed is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["app"] = self.owner  # what the app itself sets
        coordinator: TransferCoordinator = self.owner.state.coordinator
        try:
            response = await _submitted(coordinator, request, await coordinator.submit(parsed),
                                        request.headers.get("prefer"))
        except Exception as exc:  # as the exception (or server-error) middleware answers
            response = await problems.answer_for(self.owner, request, exc)
        await response(scope, reader.receive, reader.send)


#: The path :class:`SubmitFastPath` serves (``POST``).
SUBMIT_PATH = "/v1/transfers"


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    """The messages of a request body up to its end (or a disconnect), and the body."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that gives ``messages`` first."""
    left = list(messages)

    async def replay() -> Message:
        return left.pop(0) if left else await receive()

    return replay
