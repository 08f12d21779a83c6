"""``toposched serve``: run the scheduler's REST service with uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, cast

import uvicorn
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.app import create_app
from api.security import is_loopback
from api.settings import Settings
from topology.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve", help="run the scheduler REST service",
        description="Serve /v1 (workers, sidecar jobs, transfers, KV events) and /healthz. "
                    "Other settings come from TOPOSCHED_* environment variables.")
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    parser.add_argument("--mode", choices=("READ", "WRITE"), default=None,
                        help="transfer mode of this deployment (default READ)")
    parser.add_argument("--fabric", default=None, help="fabric.json to serve (tiers, NICs)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="share state with other replicas through this Redis")
    add_policy_argument(parser)
    parser.add_argument("--instances", default=None, metavar="FILE",
                        help="engine instance document (vLLM/SGLang engines to route to; "
                             "docs/engines.md)")
    parser.add_argument("--log-level", default="warning",
                        choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(handler=handle_serve)


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    """``--policy``, as ``serve`` and ``gateway`` (both through :func:`run_service`) take it."""
    parser.add_argument("--policy", default=None, metavar="NAME",
                        help="routing policy: a packaged name or a policy document path "
                             "(default fabric-cost; env TOPOSCHED_POLICY); plugin packages "
                             "of entry-point group toposched.policies load (only those "
                             "TOPOSCHED_PLUGINS lists, when set)")


def handle_serve(args: argparse.Namespace) -> int:
    """Build settings (env + flags), create the app and run it until interrupted."""
    return run_service(args, transfer_mode=args.mode, policy=args.policy,
                       instances=args.instances)


def run_service(args: argparse.Namespace, **extra: Any) -> int:
    """Build settings (env, then the common flags and ``extra``), create the app and
    run it until interrupted."""
    given = {"host": args.host, "port": args.port, "fabric": args.fabric,
             "redis_url": args.redis, **extra}
    try:
        settings = Settings(**{key: value for key, value in given.items()
                               if value is not None})
    except ValidationError as exc:
        raise InputError(settings_error(exc)) from None
    if not (settings.worker_token or settings.operator_token):
        if not is_loopback(settings.host):
            raise InputError(f"refusing to bind {settings.host} without authentication: set "
                             "TOPOSCHED_OPERATOR_TOKEN and TOPOSCHED_WORKER_TOKEN")
        print(f"toposched: no tokens configured: authentication is off, serving on "
              f"{settings.host} only", file=sys.stderr)
    protocol = type("TimedHttpToolsProtocol", (HeaderTimeout,),
                    {"header_timeout_s": settings.header_timeout_s})
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=args.log_level, access_log=False, http=protocol, loop="uvloop",
                limit_concurrency=settings.max_connections,
                # long-polls would otherwise hold a graceful shutdown for their full wait
                timeout_graceful_shutdown=2)
    return 0


def settings_error(exc: ValidationError) -> str:
    """The bad settings of ``exc``, named as their environment variables (or flags)."""
    return "; ".join(
        f"TOPOSCHED_{'_'.join(str(p) for p in err['loc']).upper()} (or its flag): "
        f"{err['msg']}, got {err.get('input')!r}" for err in exc.errors())


class HeaderTimeout(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (its ``httptools`` one: the llhttp parser in C; 0.3 to
    0.9 ms less gateway CPU a request than h11's in paired runs) with a deadline on each
    request's headers.

    uvicorn times out idle keep-alive connections, but any byte received re-arms
    nothing: a client sending its headers one byte at a time holds the connection
    forever. Here every connection must complete a request's headers within
    ``header_timeout_s`` of being opened (or of its previous response); otherwise it is
    closed. The body has its own limit (``api.security.BodyLimit``).
    """

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, HeadWithBody(transport, self.loop)))
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        before = self.cycle  # a new request replaces it once its headers are complete
        self._header_timer = self.loop.call_later(self.header_timeout_s,
                                                  self._headers_late, before)

    def _headers_late(self, before: object) -> None:
        idle = self.cycle is None or self.cycle.response_complete  # no request under way
        if idle and self.cycle is before and not self.transport.is_closing():
            self.transport.close()


class HeadWithBody:
    """A connection's transport that writes a response's head together with its body.

    uvicorn writes the status line and headers, then the body, each with its own
    ``write``: two system calls, and two wake-ups of the client, for every answer (each
    ~0.1 ms of the scheduler's CPU on these VMs; the transfer path's answers are small).
    A head that declares its ``content-length`` is held here and goes out with the next
    write (the body, written in the same step) or, failing that, at the loop's next
    turn; a streaming answer's head (no length) is written at once, as before.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``, after a held head; hold a head with a length."""
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data[:9] == b"HTTP/1.1 " and data[-4:] == b"\r\n\r\n" \
                and b"\r\ncontent-length: " in data:
            self._head = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Write a held head now."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        """Flush, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
