"""Route: a request's (prefill, decode) pair, explained, and its KV transfer queued."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError
from starlette.datastructures import State

from api.decide import decide
from api.engine_feeds import EngineFeeds
from api.load import new_reservation_id, reservations_for, reserve
from api.problems import problem
from api.routing import deliver_plan
from api.runtime import Runtime
from api.service import ServiceState
from api.snapshots import Journaled
from engines.registry import EngineRegistry
from scheduler.router.router import Decision, RouteRequest, Unschedulable
from scheduler.state.base import WorkerDrainingError
from scheduler.state.reservations import LoadItem
from scheduler.transfer.coordinator import TransferCoordinator
from scheduler.transfer.plan import TransferRecord
from topology.errors import ConflictError, InputError, NotFoundError, UnschedulableError

router = APIRouter(prefix="/v1", tags=["route"])
BlockHash = Annotated[int, Field(ge=0, le=(1 << 64) - 1, strict=True)]
TokenId = Annotated[int, Field(ge=0, le=(1 << 32) - 1, strict=True)]


class RouteInput(BaseModel):
    """A request to route: its token ids or block hashes, the model, a session."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    tokens: list[TokenId] | None = Field(default=None, max_length=1 << 20)
    block_hashes: list[BlockHash] | None = Field(default=None, max_length=1 << 16)
    model: str = Field(min_length=1, max_length=256)
    session: str | None = Field(default=None, min_length=1, max_length=256)
    request_id: str = Field(default="request", min_length=1, max_length=256)
    max_tokens: int | None = Field(
        default=None, ge=1, le=1 << 24, strict=True,
        description="the most tokens the request may generate, when known: its context on "
                    "the decode worker (api.load.context_tokens) is priced with it")

    @model_validator(mode="after")
    def _one_prompt(self) -> RouteInput:
        if (self.tokens is None) == (self.block_hashes is None):
            raise ValueError("give exactly one of tokens and block_hashes")
        if not (self.tokens or self.block_hashes):
            raise ValueError("the prompt is empty")
        return self

    def prompt_tokens(self, block_tokens: int) -> int:
        """Prompt length in tokens (block hashes count as full blocks of the model's size)."""
        return len(self.tokens) if self.tokens is not None else \
            len(self.block_hashes or ()) * block_tokens

    def blocks(self, block_tokens: int) -> int:
        """Full blocks of the prompt (what the prefix index can hold of it)."""
        return len(self.block_hashes) if self.block_hashes is not None else \
            self.prompt_tokens(block_tokens) // block_tokens

    def to_request(self) -> RouteRequest:
        """The router's request."""
        return RouteRequest(request_id=self.request_id, model=self.model,
                            token_ids=self.tokens, block_hashes=self.block_hashes,
                            session=self.session)


class RouteOutput(BaseModel):
    """The decision and the id of the transfer plan queued for the sidecars."""

    model_config = ConfigDict(frozen=True)
    decision: Decision
    plan_id: str | None = Field(description="None when nothing moves (local prefill, "
                                "or the decode side already holds every block)")
    reservation_id: str = Field(
        description="the reservation holding the load below: its prefill part ends with "
                    "the transfer, the rest when the request ends (POST /v1/reservations/"
                    "{id}/release, or the decode engine releasing the transfer); it expires "
                    "otherwise")
    reservations: list[LoadItem] = Field(description="load reserved on each worker")


#: Failures that certainly queued nothing: the reserved load goes back.
#: Decisions tried when the chosen pair's worker began draining after the decision.
DRAIN_ATTEMPTS = 3
REFUSED = (UnschedulableError, NotFoundError, ConflictError, InputError)
_UNSCHEDULABLE = {"description": "unschedulable (problem+json with `reasons`, Retry-After)"}
#: The body is parsed in the endpoint (see ``route``), so its schema is declared here.
_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": RouteInput.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


def _parse(raw: bytes) -> RouteInput:
    """The request body, or a 422 naming every bad field (as FastAPI would)."""
    try:
        return RouteInput.model_validate_json(raw)
    except PydanticValidationError as exc:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])}
                                      for err in exc.errors(include_url=False)]) from None


@router.post("/route", response_model=RouteOutput, openapi_extra=_BODY, responses={
    422: {"description": "invalid request (problem+json naming each bad field)"},
    503: _UNSCHEDULABLE})
async def route(request: Request) -> Response:
    """Pick the (prefill, decode) pair and queue the blocks the decode side lacks.

    The hot path of the service: the body is validated once from its bytes and the
    answer serialised once, and the app's state is read directly rather than through
    per-request dependencies (FastAPI's own body, dependency and response-model
    handling cost about as much as the decision at 256 workers).
    """
    body = _parse(await request.body())
    state = request.app.state
    for _ in range(DRAIN_ATTEMPTS - 1):
        try:
            return await _route_once(body, state, request.url.path)
        except WorkerDrainingError:
            # A worker began draining between the decision and its transfer: the
            # store marks it, so the next decision leaves it out (another pair, or 503).
            continue
    return await _route_once(body, state, request.url.path)


async def _route_once(body: RouteInput, state: State, path: str) -> Response:
    """One decision, its load reserved and its transfer queued (the module's route)."""
    services: ServiceState = state.services
    result, block_tokens = await _decide(body, services, state.coordinator, state.runtime,
                                         state.engine_feeds.registry)
    if isinstance(result, Unschedulable):
        return problem(503, "unschedulable", "; ".join(result.reasons), path,
                       reasons=list(result.reasons))
    runtime: Runtime = state.runtime
    await asyncio.sleep(0)  # between two passes over the workers (api/decide.py)
    feeds: EngineFeeds = state.engine_feeds
    # Engine instances move the KV themselves (vLLM's NixlConnector, SGLang): no
    # sidecar plan (their NIXL figures are labelled with this pair's tier), and their
    # decode blocks are not taken until the KV lands.
    sidecar = not feeds.engine_driven(result)
    items = reservations_for(result, body.prompt_tokens(block_tokens),
                             block_tokens=block_tokens, blocks_taken=sidecar,
                             max_tokens=body.max_tokens)
    reservation_id = new_reservation_id()
    await reserve(runtime.loads, reservation_id, runtime.replica_id, items,
                  state.settings.reservation_ttl_s)
    try:
        record = await deliver_plan(state.coordinator, result, reservation_id) \
            if sidecar else None
    except REFUSED:
        await runtime.loads.close_reservation(reservation_id)
        raise
    # Any other failure (Redis gone, a timeout, cancellation) may come after the
    # transfer was queued: then it runs, so its load stays reserved (until the transfer
    # ends or the reservation expires), like its blocks.
    _observe(runtime, body.blocks(block_tokens), result, record)
    feeds.note(result)
    output = RouteOutput(decision=result, reservation_id=reservation_id, reservations=items,
                         plan_id=record.plan.plan_id if record is not None else None)
    return Response(output.model_dump_json(), media_type="application/json")


async def _decide(body: RouteInput, services: ServiceState, coordinator: TransferCoordinator,
                  runtime: Runtime, engines: EngineRegistry
                  ) -> tuple[Decision | Unschedulable, int]:
    """The decision over the live workers and routable engine instances (their loads
    included), and the block size prompts were hashed with (:func:`api.decide.decide`)."""
    journaled = Journaled.of(coordinator.store, runtime.loads)
    if journaled is not None:  # read by name as workers change: no listing of them all
        result, snapshot = await decide(body.to_request(), services, runtime, engines,
                                        entries=(), loads=journaled.loads.live(),
                                        journaled=journaled)
    else:
        entries, loads = await coordinator.store.list_with_loads(runtime.loads)
        result, snapshot = await decide(body.to_request(), services, runtime, engines,
                                        entries=entries, loads=loads)
    return result, snapshot.block_tokens


def _observe(runtime: Runtime, total: int, decision: Decision,
             record: TransferRecord | None) -> None:
    """Count the prefix blocks (of ``total``) the prefill side held, and the queued
    transfer on the shared links of its path until its deadline (the next decisions see
    it as ``link_load``)."""
    runtime.telemetry.observe_prefix(min(decision.prefill.cached_blocks, total), total)
    if record is not None:
        runtime.inflight.add(record.plan.plan_id, decision.transfer.links,
                             decision.transfer.bytes, record.plan.not_after)
