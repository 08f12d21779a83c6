"""OpenAI-compatible endpoints of the gateway: completions, chat completions, models.

Bodies are the OpenAI API's (and the engines' extensions, passed through untouched);
answers are the decode engine's, streamed as they arrive, with the routing decision
in ``x-toposched-*`` headers. Errors of the gateway itself are problem+json (422 bad
body, 404 unknown model, 503 nothing routable, with ``Retry-After``); errors the
engines answer pass through as they are.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Route

from api.gateway.relay import Gateway
from api.security import Role, TokenAuth

_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model"], "additionalProperties": True,
    "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"}}}}}}}
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "the engine's answer (JSON, or server-sent events when streaming)"},
    404: {"description": "no instance serves the model"},
    422: {"description": "invalid body (problem+json naming each field)"},
    503: {"description": "no engine pair can take the request now (Retry-After)"}}


#: The client token holds :class:`TokenAuth`'s worker slot (api/gateway/setup.py).
_CLIENTS = frozenset({Role.WORKER})


async def _client(request: Request) -> None:
    auth: TokenAuth = request.app.state.client_auth
    auth.check(request.headers.get("authorization"), _CLIENTS)


router = APIRouter(tags=["openai"], dependencies=[Depends(_client)])


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


@router.post("/v1/completions", openapi_extra=_BODY, responses=_ANSWERS)
async def completions(request: Request) -> Response:
    """A completion, run through the (prefill, decode) pair toposched picks."""
    return await _gateway(request).handle(request, "/v1/completions")


@router.post("/v1/chat/completions", openapi_extra=_BODY, responses=_ANSWERS)
async def chat_completions(request: Request) -> Response:
    """A chat completion, run through the (prefill, decode) pair toposched picks."""
    return await _gateway(request).handle(request, "/v1/chat/completions")


def install_lean_routes(app: FastAPI) -> None:
    """Serve the two completion endpoints ahead of FastAPI's routing: plain Starlette
    routes at the head of ``app``'s routes (the same middlewares, exception handlers,
    client-token check and answers), without FastAPI's included-router matching and
    dependency solving on the gateway's hot path. The FastAPI routes above stay for
    the OpenAPI document (and are never reached for these two paths)."""
    app.router.routes[0:0] = [_lean_route("/v1/completions"),
                              _lean_route("/v1/chat/completions")]


def _lean_route(path: str) -> Route:
    """``POST path`` through the gateway, the client token checked first."""
    async def endpoint(request: Request) -> Response:
        await _client(request)
        return await _gateway(request).handle(request, path)

    return Route(path, endpoint, methods=["POST"], include_in_schema=False)


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """The models some engine instance serves (OpenAI's list shape)."""
    registry = _gateway(request).registry
    return {"object": "list", "data": [
        {"id": model, "object": "model", "created": 0, "owned_by": "toposched",
         "instances": registry.serves(model)} for model in registry.models()]}


@router.get("/v1/gateway/health")
async def health(request: Request) -> dict[str, Any]:
    """The engines the gateway routes to and which are in routing now (the engine
    registry's view: their /health, and engines the gateway could not reach)."""
    registry = _gateway(request).registry
    statuses = registry.status()
    engines = [{"name": i.name, "engine": i.engine, "role": i.role, "model": i.model,
                "base_url": i.base_url, "state": s.state, "in_routing": s.routable,
                "last_error": s.last_error}
               for s in statuses if (i := registry.get(s.name)) is not None]
    ready = sum(s.routable for s in statuses)
    return {"status": "ok" if statuses and ready == len(statuses) else
            ("degraded" if ready else "down"), "engines": engines}
