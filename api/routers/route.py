"""Route: a request's (prefill, decode) pair, explained, and its KV transfer queued."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.deps import Coordinator, RuntimeDep
from api.load import Reservation, release, reservations_for, reserve, with_loads
from api.problems import problem
from api.routing import BLOCK_TOKENS, deliver_plan, kv_bytes_for, preferred_pairs
from api.service import Services
from scheduler.router.router import Decision, RouteRequest, Unschedulable
from topology.errors import NotFoundError

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

    @model_validator(mode="after")
    def _one_prompt(self) -> RouteInput:
        if (self.tokens is None) == (self.block_hashes is None):
            raise ValueError("give exactly one of tokens and block_hashes")
        if not (self.tokens or self.block_hashes):
            raise ValueError("the prompt is empty")
        return self

    @property
    def prompt_tokens(self) -> int:
        """Prompt length in tokens (block hashes count as full blocks)."""
        return len(self.tokens) if self.tokens is not None else \
            len(self.block_hashes or ()) * BLOCK_TOKENS

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
    reservations: list[Reservation] = Field(
        description="load reserved on each worker; release it with POST "
                    "/v1/workers/{worker}/load/release when the request leaves the worker")


_UNSCHEDULABLE = {"description": "unschedulable (problem+json with `reasons`, Retry-After)"}


@router.post("/route", response_model=RouteOutput, responses={503: _UNSCHEDULABLE})
async def route(body: RouteInput, request: Request, services: Services,
                coordinator: Coordinator, runtime: RuntimeDep) -> RouteOutput | Response:
    """Pick the (prefill, decode) pair and queue the blocks the decode side lacks."""
    fabric = services.fabric
    if fabric is None:
        raise NotFoundError("fabric", "current", "PUT /v1/topology/inventory first")
    started = time.perf_counter()
    snapshots = services.snapshots
    workers = with_loads(
        snapshots.workers(await coordinator.store.list_workers(), fabric, body.model),
        await runtime.loads.loads())
    current = services.current
    pairs = preferred_pairs(current.placement.pairings if current else (), workers)
    snapshot = snapshots.build(fabric, workers, kv_bytes=kv_bytes_for(body.model),
                                         pairs=pairs)
    result = fabric.router.route(body.to_request(), snapshot) if workers else Unschedulable(
        request_id=body.request_id, policy=services.policy.name,
        reasons=(f"no registered worker on the fabric serves {body.model}",))
    services.record_decision(time.perf_counter() - started)
    if isinstance(result, Unschedulable):
        return problem(503, "unschedulable", "; ".join(result.reasons), request.url.path,
                       reasons=list(result.reasons))
    reservations = reservations_for(result, body.prompt_tokens)
    await reserve(runtime.loads, reservations)
    try:
        plan_id = await deliver_plan(coordinator, result)
    except BaseException:
        await release(runtime.loads, reservations)
        raise
    return RouteOutput(decision=result, plan_id=plan_id, reservations=reservations)
