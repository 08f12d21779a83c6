"""RFC 9457 problem details: the one place where the error tree becomes HTTP.

invalid input → 422, unknown name → 404, conflict → 409, unschedulable → 503 with
``Retry-After``, anything else → 500 without internals; Starlette's own answers (no such
route, wrong method) become problems too, and the OpenAPI document declares them all.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from scheduler.state.reservations import StoreUnavailableError
from topology.errors import (
    ConflictError,
    InputError,
    NotFoundError,
    ToposchedError,
    UnschedulableError,
    ValidationError,
)

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_S = 1
_STATUS: tuple[tuple[type[ToposchedError], int], ...] = (
    (InputError, 422), (NotFoundError, 404), (ConflictError, 409), (UnschedulableError, 503),
    (StoreUnavailableError, 503))


def problem(status: int, title: str, detail: str, instance: str,
            **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "instance": instance, **extra}
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


async def _tree(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ToposchedError)
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    if status == 500:
        log.error("unexpected %s: %s", type(exc).__name__, exc)
        return problem(500, "internal error", "see the server log", request.url.path)
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError):
        extra["errors"] = [{"path": i.path, "message": i.message} for i in exc.issues]
    return problem(status, exc.title, str(exc), request.url.path, **extra)


async def _request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"path": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
              for err in exc.errors()]
    return problem(422, "validation error", f"{len(errors)} problem(s) in the request",
                   request.url.path, errors=errors)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (no such route 404, wrong method 405, …) as problems."""
    assert isinstance(exc, StarletteHTTPException)
    try:
        title = HTTPStatus(exc.status_code).phrase.lower()
    except ValueError:
        title = "error"
    response = problem(exc.status_code, title, str(exc.detail), request.url.path)
    response.headers.update(exc.headers or {})
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return problem(500, "internal error", "see the server log", request.url.path)


#: An exception handler as ``FastAPI.exception_handlers`` holds it.
Handler = Callable[[Request, Exception], Any]


def handler_for(handlers: dict[Any, Handler], exc: Exception) -> Handler | None:
    """The handler of ``handlers`` for ``exc``, found as Starlette's exception
    middleware finds it (a status code for an HTTP exception, else the class's MRO)."""
    if isinstance(exc, StarletteHTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    return next((handlers[kind] for kind in type(exc).__mro__ if kind in handlers), None)


async def answer_for(app: FastAPI, request: Request, exc: Exception) -> Response:
    """``app``'s answer to ``exc`` raised while serving ``request``, as its exception
    middleware (or, for anything unexpected, its server-error middleware) would give
    it; re-raises ``exc`` when no handler takes it."""
    handler = handler_for(app.exception_handlers, exc)
    if handler is None:
        raise exc
    response = handler(request, exc)
    if inspect.isawaitable(response):
        response = await response
    assert isinstance(response, Response)
    return response


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``, and document them in its OpenAPI schema."""
    app.add_exception_handler(ToposchedError, _tree)
    app.add_exception_handler(RequestValidationError, _request)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
    app.openapi = _documented(app)  # type: ignore[method-assign]


#: The shape of every error answer (RFC 9457, with this service's two extensions).
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Problem", "required": ["type", "title", "status", "detail"],
    "description": "RFC 9457 problem details (application/problem+json).",
    "properties": {
        "type": {"type": "string", "example": "about:blank"},
        "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"},
        "errors": {"type": "array", "description": "each invalid field: its path and why",
                   "items": {"type": "object", "required": ["path", "message"], "properties": {
                       "path": {"type": "string"}, "message": {"type": "string"}}}},
        "reasons": {"type": "array", "items": {"type": "string"},
                    "description": "why a request cannot be scheduled (503)"}}}
_PROBLEM = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
#: Answers any /v1 operation may give, and what they mean.
_COMMON = {"401": "missing or invalid bearer token", "403": "the token may not do this",
           "404": "a named resource (or the fabric or placement it needs) does not exist",
           "422": "invalid input: each bad field with its path",
           "500": "internal error (details only in the server log)",
           "503": "the state store does not answer, or the request cannot be scheduled "
                  "now (Retry-After)"}
_WITH_BODY = {"408": "the request body did not arrive in time",
              "413": "the request body is too large"}


def _documented(app: FastAPI) -> Any:
    """``app.openapi`` with every error answer declared as problem+json."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = PROBLEM_SCHEMA
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    _declare_problems(operation, path.startswith("/v1/"))
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _declare_problems(operation: dict[str, Any], api: bool) -> None:
    responses = operation.setdefault("responses", {})
    wanted = {"500": _COMMON["500"]}
    if api:
        wanted = {**_COMMON, **(_WITH_BODY if "requestBody" in operation else {})}
    for code, description in wanted.items():
        responses.setdefault(code, {"description": description})
    for code, answer in responses.items():
        if code[0] in "45":
            answer["content"] = _PROBLEM
