"""OpenAI-compatible endpoints of the gateway: completions, chat completions, models.

Bodies are the OpenAI API's (and the engines' extensions, passed through untouched);
answers are the decode engine's, streamed as they arrive, with the routing decision
in ``x-toposched-*`` headers. Errors of the gateway itself are problem+json (422 bad
body, 404 unknown model, 503 nothing routable, with ``Retry-After``); errors the
engines answer pass through as they are.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from api.gateway.relay import Gateway
from api.problems import Handler, handler_for
from api.security import ASGIApp, BodyLimit, Receive, Role, Scope, Send, TokenAuth

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


#: The paths :class:`CompletionsFastPath` serves.
PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


class CompletionsFastPath:
    """ASGI middleware, the outermost of the app's own: ``POST`` to the two completion
    endpoints goes straight to the gateway, everything else on to ``app``.

    It does for these two what the layers below would, in one layer and without their
    per-request wrappers: the body limit (413 on a declared length at once, 413/408
    while reading: :class:`api.security.BodyLimit`'s own rules), the client token
    (401/403 before the body is read), the app's exception handlers (problem+json) for
    what the gateway raises before answering. :class:`api.security.Authenticate` only
    refuses protected paths and :class:`api.strict_numbers.StrictNumbers` only bodies
    with a schema, neither of which these are. The FastAPI routes above stay for the
    OpenAPI document and are not reached for ``POST``; other methods go on to them
    (405)."""

    def __init__(self, app: ASGIApp, owner: FastAPI, max_bytes: int,
                 timeout_s: float | None) -> None:
        """``owner``: the app whose state (gateway, client token) and exception
        handlers serve these requests."""
        self.app, self.owner = app, owner
        self.limit = BodyLimit(app, max_bytes=max_bytes, timeout_s=timeout_s)
        self._parts: tuple[Gateway, TokenAuth, dict[Any, Handler]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if path not in PATHS or scope["type"] != "http" or scope["method"] != "POST" \
                or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        if await self.limit.refused_at_once(scope, send):
            return
        gateway, auth, handlers = self._parts or self._resolve()
        reader = self.limit.reader(scope, receive, send)
        request = Request(scope, reader.receive)
        try:
            auth.check(request.headers.get("authorization"), _CLIENTS)
            response = await gateway.handle(request, path)
        except Exception as exc:
            if reader.refused:  # 408/413 went out already
                return
            handler = handler_for(handlers, exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, reader.receive, send)

    def _resolve(self) -> tuple[Gateway, TokenAuth, dict[Any, Handler]]:
        state = self.owner.state
        handlers = {key: value for key, value in self.owner.exception_handlers.items()
                    if key not in (500, Exception)}
        self._parts = (state.gateway, state.client_auth, handlers)
        return self._parts


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
