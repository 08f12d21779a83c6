"""Bearer-token authentication with two roles, and a request body size limit.

Roles: ``worker`` (sidecars: register, heartbeat, jobs, reports, KV events) and
``operator`` (everything, and alone may change topology and placement). Tokens are
compared in constant time; they never appear in logs or error bodies. With no token
configured, authentication is off and ``toposched serve`` binds to loopback only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from enum import StrEnum
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from api.problems import MEDIA_TYPE

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Role(StrEnum):
    """Who a token belongs to."""

    WORKER = "worker"
    OPERATOR = "operator"


class AuthError(Exception):
    """Missing or wrong credentials (401) or a role that may not do this (403)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)


class TokenAuth:
    """Checks ``Authorization: Bearer …`` against the configured tokens."""

    def __init__(self, worker_token: str | None, operator_token: str | None) -> None:
        self._tokens = [(Role.OPERATOR, operator_token), (Role.WORKER, worker_token)]

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return any(token for _, token in self._tokens)

    def role_of(self, header: str | None) -> Role:
        """The role a header's token grants; raises AuthError(401) otherwise."""
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise AuthError(401, "missing bearer token")
        found: Role | None = None
        for role, token in self._tokens:
            # compare against every token, always, so timing reveals nothing
            if token and hmac.compare_digest(presented.encode(), token.encode()):
                found = found or role
        if found is None:
            raise AuthError(401, "invalid bearer token")
        return found

    def check(self, header: str | None, allowed: frozenset[Role]) -> Role | None:
        """Authorise a request for ``allowed`` roles; None when auth is off."""
        if not self.enabled:
            return None
        role = self.role_of(header)
        if role is not Role.OPERATOR and role not in allowed:
            raise AuthError(403, f"the {role.value} role may not do this")
        return role


def require(*roles: Role) -> Any:
    """A FastAPI dependency admitting the given roles (operators are always admitted)."""
    allowed = frozenset(roles)

    async def dependency(request: Request) -> Role | None:
        auth: TokenAuth = request.app.state.auth
        return auth.check(request.headers.get("authorization"), allowed)

    return Depends(dependency)


async def auth_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """AuthError → 401/403 problem+json (401 says how to authenticate)."""
    assert isinstance(exc, AuthError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    title = "unauthorized" if exc.status == 401 else "forbidden"
    body = {"type": "about:blank", "title": title, "status": exc.status, "detail": exc.detail,
            "instance": request.url.path}
    return JSONResponse(body, status_code=exc.status, media_type=MEDIA_TYPE, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 problem+json."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        state = {"seen": 0, "refused": False}

        async def counted() -> Message:
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > self.max_bytes and not state["refused"]:
                state["refused"] = True
                await self._refuse(scope, send)
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not state["refused"]:  # the 413 already went out; drop the app's answer
                await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not state["refused"]:
                raise

    async def _refuse(self, scope: Scope, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes} bytes"
        response = JSONResponse(
            {"type": "about:blank", "title": "payload too large", "status": 413,
             "detail": detail, "instance": scope.get("path", "")},
            status_code=413, media_type=MEDIA_TYPE)
        await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    return host in {"localhost", "::1"} or host.startswith("127.")
