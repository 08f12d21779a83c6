"""Bearer-token authentication with two roles, and request body limits.

Roles: ``worker`` (sidecars: register, heartbeat, jobs, reports, KV events) and
``operator`` (everything, and alone may change topology and placement). A worker's
own token (returned when it registers) acts on that worker only; the shared worker
token registers workers but acts on none by name (:func:`own_worker`). Tokens are
compared in constant time; they never appear in logs or error bodies. With no token
configured, authentication is off and ``toposched serve`` binds to loopback only.

Authentication happens in ASGI middleware (:class:`Authenticate`), before any body is
read; what an identity may do is decided by the route dependencies (:func:`require`,
:func:`own_worker`). Bodies must arrive within a time limit and a size limit
(:class:`BodyLimit`): a client that trickles its body gets 408, not a held connection.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi import Depends, Request, Response
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


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request: the role, and for a worker's own token the worker's name
    (``None``: an operator, or the shared worker token)."""

    role: Role
    worker: str | None = None


class AuthError(Exception):
    """Missing or wrong credentials (401) or a role that may not do this (403)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(detail)


class TokenAuth:
    """Checks ``Authorization: Bearer …`` against the configured tokens.

    Three kinds of token: the operator token, the shared worker token, and a worker's
    own token (:meth:`worker_token`: bound to one worker name, derived from the shared
    worker token, so every replica checks it without shared state and changing the
    shared token revokes them all).
    """

    def __init__(self, worker_token: str | None, operator_token: str | None) -> None:
        self._tokens = [(Role.OPERATOR, operator_token), (Role.WORKER, worker_token)]
        self._key = worker_token.encode() if worker_token else None

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return any(token for _, token in self._tokens)

    def worker_token(self, name: str) -> str | None:
        """The token of worker ``name`` alone (None: no worker token configured)."""
        if self._key is None:
            return None
        return f"{_OWN_PREFIX}{_b64(name.encode())}.{_b64(self._mac(name))}"

    def _mac(self, name: str) -> bytes:
        assert self._key is not None
        return hmac.digest(self._key, b"toposched-worker:" + name.encode(), "sha256")

    def identify(self, header: str | None) -> Identity:
        """Who a header's token belongs to; raises AuthError(401) otherwise."""
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise AuthError(401, "missing bearer token")
        if presented.startswith(_OWN_PREFIX):
            return self._own(presented)
        found: Role | None = None
        for role, token in self._tokens:
            # compare against every token, always, so timing reveals nothing
            if token and hmac.compare_digest(presented.encode(), token.encode()):
                found = found or role
        if found is None:
            raise AuthError(401, "invalid bearer token")
        return Identity(found)

    def _own(self, presented: str) -> Identity:
        encoded_name, _, encoded_mac = presented[len(_OWN_PREFIX):].partition(".")
        try:
            name = _unb64(encoded_name).decode()
            mac = _unb64(encoded_mac)
        except (ValueError, UnicodeDecodeError):
            raise AuthError(401, "invalid bearer token") from None
        if self._key is None or not hmac.compare_digest(mac, self._mac(name)):
            raise AuthError(401, "invalid bearer token")
        return Identity(Role.WORKER, name)

    def role_of(self, header: str | None) -> Role:
        """The role a header's token grants; raises AuthError(401) otherwise."""
        return self.identify(header).role

    def check(self, header: str | None, allowed: frozenset[Role]) -> Role | None:
        """Authorise a request for ``allowed`` roles; None when auth is off."""
        if not self.enabled:
            return None
        return self.admit(self.identify(header), allowed).role

    @staticmethod
    def admit(identity: Identity, allowed: frozenset[Role]) -> Identity:
        """``identity`` if its role may do this (operators always may), else 403."""
        if identity.role is not Role.OPERATOR and identity.role not in allowed:
            raise AuthError(403, f"the {identity.role.value} role may not do this")
        return identity


_OWN_PREFIX = "tsw1."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _identity(request: Request) -> Identity:
    """The request's identity: as the authentication middleware found it, else from
    its header (apps built without the middleware, e.g. in tests)."""
    found = request.scope.get(_SCOPE_KEY)
    if isinstance(found, Identity):
        return found
    auth: TokenAuth = request.app.state.auth
    return auth.identify(request.headers.get("authorization"))


def admit_scope(auth: TokenAuth, scope: Scope, allowed: frozenset[Role]) -> bool:
    """Whether a request may do what ``allowed`` roles may (True when auth is off); its
    identity is kept in ``scope`` as :class:`Authenticate` keeps it. Refuses nothing:
    a False request goes on to the layers that answer it (401/403)."""
    if not auth.enabled:
        return True
    try:
        identity = auth.admit(auth.identify(_header(scope, b"authorization")), allowed)
    except AuthError:
        return False
    scope[_SCOPE_KEY] = identity
    return True


def require(*roles: Role) -> Any:
    """A FastAPI dependency admitting the given roles (operators are always admitted)."""
    allowed = frozenset(roles)

    async def dependency(request: Request) -> Role | None:
        return admit_request(request, allowed)

    return Depends(dependency)


def admit_request(request: Request, allowed: frozenset[Role]) -> Role | None:
    """What :func:`require` checks, for routes outside FastAPI's dependencies: the
    request's role if it may do this (None: authentication is off); else AuthError."""
    auth: TokenAuth = request.app.state.auth
    if not auth.enabled:
        return None
    return auth.admit(_identity(request), allowed).role


def own_worker(shared: frozenset[str] = frozenset()) -> Any:
    """A FastAPI dependency keeping workers to themselves.

    A worker's own token acts only on its worker: the ``{name}`` of the path, the
    ``name`` it registers, the ``worker`` of the reports and KV events it posts. The
    shared worker token may register any worker (the answer carries that worker's own
    token in ``X-Worker-Token``) but not act on one by name; operators may do anything.
    Route paths in ``shared`` (templates with plain parameters, e.g.
    ``/v1/workers/{name}/load`` for a route declared with ``{name:path}``) are open to
    any worker credential.
    """
    async def dependency(request: Request, response: Response) -> None:
        auth: TokenAuth = request.app.state.auth
        if not auth.enabled:
            return
        identity, path = _identity(request), _route_template(request)
        if path in shared:
            return
        subject = request.path_params.get("name")
        if subject is not None:
            _only(identity, {subject}, f"worker {subject!r}")
            return
        named = await _named_workers(request, path)
        if named is None:
            return
        if identity.worker is not None:
            _only(identity, named, ", ".join(sorted(named)))
        if path == REGISTER_PATH and len(named) == 1:
            token = auth.worker_token(next(iter(named)))
            if token is not None:
                response.headers[WORKER_TOKEN_HEADER] = token

    return Depends(dependency)


def _route_template(request: Request) -> str:
    """The matched route's path with plain parameters (``{name}``, not ``{name:path}``)."""
    route = request.scope.get("route")
    return str(getattr(route, "path_format", None) or getattr(route, "path", ""))


def _only(identity: Identity, subjects: set[str], what: str) -> None:
    if identity.role is Role.OPERATOR or {identity.worker} == subjects:
        return
    if identity.worker is None:
        raise AuthError(403, f"the shared worker token may not act on {what}: use the "
                             f"worker's own token (the {WORKER_TOKEN_HEADER} header of its "
                             "registration) or an operator token")
    raise AuthError(403, f"the token of worker {identity.worker!r} may act on that worker "
                         f"only, not on {what}")


async def _named_workers(request: Request, path: str) -> set[str] | None:
    """The workers a request body speaks for (registration, report, KV events); None
    when the path has none or the body is not what the endpoint takes (it answers 422)."""
    field = _BODY_WORKER.get((request.method, path))
    if field is None:
        return None
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    items = body if isinstance(body, list) else [body]
    names = {item.get(field) for item in items if isinstance(item, dict)}
    found = {name for name in names if isinstance(name, str)}
    return found if found and len(found) == len(names) else None


#: Registration: the answer carries the worker's own token.
REGISTER_PATH = "/v1/workers"
#: The response header carrying a registered worker's own token.
WORKER_TOKEN_HEADER = "X-Worker-Token"
#: Requests whose body names the worker(s) they act for: (method, route) → field.
_BODY_WORKER = {("POST", REGISTER_PATH): "name",
                ("POST", "/v1/transfers/{plan_id}/report"): "worker",
                ("POST", "/v1/transfers/{plan_id}/release"): "worker",
                ("POST", "/v1/kv-events"): "worker"}
_SCOPE_KEY = "toposched.identity"


async def auth_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """AuthError → 401/403 problem+json (401 says how to authenticate)."""
    assert isinstance(exc, AuthError)
    return _auth_problem(exc, request.url.path)


def _auth_problem(exc: AuthError, instance: str, *, close: bool = False) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if close:  # answered before the body was read: the connection cannot be reused
        headers["Connection"] = "close"
    title = "unauthorized" if exc.status == 401 else "forbidden"
    body = {"type": "about:blank", "title": title, "status": exc.status, "detail": exc.detail,
            "instance": instance}
    return JSONResponse(body, status_code=exc.status, media_type=MEDIA_TYPE, headers=headers)


class Authenticate:
    """ASGI middleware: authenticate before anything reads the request body.

    Requests to ``protected`` path prefixes need a valid token when authentication is on:
    without one they get 401 at once, whatever their body (no body is read or parsed
    for them). The identity found is kept in the scope for the route dependencies,
    which decide what it may do (403).
    """

    def __init__(self, app: ASGIApp, auth: TokenAuth, protected: tuple[str, ...]) -> None:
        self.app = app
        self.auth = auth
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.auth.enabled:
            header = _header(scope, b"authorization")
            try:
                scope[_SCOPE_KEY] = self.auth.identify(header)
            except AuthError as exc:
                if str(scope.get("path", "")).startswith(self.protected):
                    problem = _auth_problem(exc, scope.get("path", ""), close=True)
                    await problem(scope, _drain, send)
                    return
        await self.app(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get 413, bodies that do not
    arrive within ``timeout_s`` get 408 (problem+json); the connection is then closed.

    The time limit covers the whole body from the first read, so a client trickling
    one byte at a time cannot hold a connection (and its task) for long. Reads after
    the body is complete (an app waiting for the client to disconnect) are not timed.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None,
                 streams: tuple[str, ...] = ()) -> None:
        """``streams``: path suffixes of POST bodies that stay open on purpose (each
        line is limited by its route instead)."""
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
                self.streams and str(scope.get("path", "")).endswith(self.streams)):
            await self.app(scope, receive, send)
            return
        if await self.refused_at_once(scope, send):
            return
        reader = self.reader(scope, receive, send)
        try:
            await self.app(scope, reader.receive, reader.send)
        except Exception:
            if not reader.refused:
                raise

    async def refused_at_once(self, scope: Scope, send: Send) -> bool:
        """Whether the declared ``Content-Length`` is over the limit (413 sent)."""
        if self.declared_over(scope):
            await _refuse(scope, send, 413, "payload too large",
                          f"request body larger than {self.max_bytes} bytes")
            return True
        return False

    def declared_over(self, scope: Scope) -> bool:
        """Whether the declared ``Content-Length`` is over the limit."""
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                return bool(value.isdigit() and int(value) > self.max_bytes)
        return False

    def reader(self, scope: Scope, receive: Receive, send: Send) -> BodyReader:
        """The request's body as this limit lets an app read it."""
        return BodyReader(self, scope, receive, send)


class BodyReader:
    """One request's body as :class:`BodyLimit` lets the app read it: ``receive`` answers
    ``http.disconnect`` once the body was refused (408/413 sent, :attr:`refused`)."""

    def __init__(self, limit: BodyLimit, scope: Scope, receive: Receive, send: Send) -> None:
        self.limit, self.scope, self._receive, self._send = limit, scope, receive, send
        self.seen = 0
        self.complete = False
        self.refused = False
        self.deadline: float | None = None

    async def receive(self) -> Message:
        if self.complete or self.limit.timeout_s is None:
            message = await self._receive()
        else:
            if self.deadline is None:
                self.deadline = time.monotonic() + self.limit.timeout_s
            try:  # a deadline on this task (wait_for would start a task for each read)
                async with asyncio.timeout(max(self.deadline - time.monotonic(), 0)):
                    message = await self._receive()
            except TimeoutError:
                return await self._refuse(408, "request timeout", "the request body did not "
                                          f"arrive within {self.limit.timeout_s:g} s")
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.seen > self.limit.max_bytes:
                return await self._refuse(413, "payload too large", "request body larger "
                                          f"than {self.limit.max_bytes} bytes")
        return message

    async def _refuse(self, status: int, title: str, detail: str) -> Message:
        if not self.refused:
            self.refused = True
            await _refuse(self.scope, self._send, status, title, detail)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if not self.refused:  # the refusal already went out; drop the app's answer
            await self._send(message)


async def _refuse(scope: Scope, send: Send, status: int, title: str, detail: str) -> None:
    """A problem+json answer that closes the connection (the rest of the body is unread)."""
    response = JSONResponse({"type": "about:blank", "title": title, "status": status,
                             "detail": detail, "instance": scope.get("path", "")},
                            status_code=status, media_type=MEDIA_TYPE,
                            headers={"Connection": "close"})
    await response(scope, _drain, send)


async def _drain() -> Message:
    return {"type": "http.disconnect"}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: ``localhost`` and loopback IP
    literals (127.0.0.0/8, ::1). Other names are not resolved: a name such as
    ``127.attacker.example`` may point anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False
