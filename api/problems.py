"""RFC 9457 problem details: the one place where the error tree becomes HTTP.

invalid input → 422, unknown name → 404, conflict → 409, unschedulable → 503 with
``Retry-After``, anything else → 500 without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return problem(500, "internal error", "see the server log", request.url.path)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(ToposchedError, _tree)
    app.add_exception_handler(RequestValidationError, _request)
    app.add_exception_handler(Exception, _unexpected)
