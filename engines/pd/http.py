"""The HTTP/1.1 client of the engine legs: one POST per leg over pooled keep-alive
connections, the answer's body streamed as it arrives.

Hand-written on asyncio protocols around ``httptools`` (llhttp, the parser uvicorn
uses; a declared dependency) because the legs are the gateway's hot path, two a
request and a 1 ms budget. ``bench/leg_client_bench.py`` (a 1,024-token prefill leg,
then a streamed 8-token decode leg to fake engines, one at a time, tokens compared)
measured the client CPU per request (bench/results/leg_client.md): httpx 0.29
2.12 ms, aiohttp 3.14 0.65 ms, this client 0.40 ms; aiohttp would spend ~0.25 ms a
request more of that budget (and bring seven packages).

What it does: ``POST`` with the head and body in one write; the answer's status and
headers, then its body piece by piece (chunked transfer coding removed, content
untouched: no ``Accept-Encoding`` is sent; a body with neither a length nor chunked
coding ends when the engine closes the connection); a connection goes back to the pool only
once its answer was read to the end with keep-alive on, and an idle one is dropped
after :data:`IDLE_S` (before uvicorn's 5 s keep-alive runs out on the engine's side).
An answer given up half-read closes its connection, which is how an engine hears that
the client left. Failures to connect, time-outs and connections lost mid-answer raise
:class:`TransportError` subclasses. Plain ``http`` and ``https`` (system trust store);
an IPv6 literal host is sent as ``Host: [addr]:port``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import msgspec

#: Seconds an idle pooled connection is kept (engines' uvicorn closes them at 5 s).
IDLE_S = 4.0
#: Idle keep-alive connections kept per engine.
KEEPALIVE = 64
#: The header carrying the request id (it changes every request: not in the cached head).
REQUEST_ID = "X-Request-Id"
#: Body bytes buffered from an engine before reading pauses until the relay catches up.
HIGH_WATER = 1 << 20


class TransportError(Exception):
    """The engine could not be reached or the connection failed mid-answer."""


class ConnectError(TransportError):
    """The connection could not be made (refused, unreachable, bad address)."""


class ConnectTimeout(TransportError):
    """The connection was not made in time."""


class ReadTimeout(TransportError):
    """The engine sent nothing for the read time-out."""


class RemoteProtocolError(TransportError):
    """The engine closed the connection mid-answer or answered non-HTTP."""


def loads(raw: bytes) -> Any:
    """JSON text as Python values, exactly as ``json.loads`` reads it (``ValueError``
    when it is not JSON): msgspec's decoder (~2x faster on a 1,024-token prompt), and
    ``json`` for what msgspec refuses (``NaN``, numbers past a double, lone surrogates,
    UTF-16/32 text)."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


@lru_cache(maxsize=1024)
def origin_of(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an absolute ``http``/``https`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    return parts.scheme, parts.hostname, port, path + (f"?{parts.query}" if parts.query else "")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self.loop, self.read_timeout_s = loop, read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = self.keep_alive = self.answered = False
        #: The answer's body ends when the engine closes the connection (no length, not
        #: chunked: HTTP/1.1 section 6.3, rule 7).
        self.until_eof = False
        self.error: TransportError | None = None
        self.pieces: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"bad HTTP from the engine: {exc}"))
            self.abort()
            return
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_eof and exc is None and not self.complete and self.error is None:
            self.complete = True  # a close-delimited body ends here (never kept alive)
        if not self.complete and self.error is None:
            self._fail(RemoteProtocolError("the engine closed the connection mid-answer"))
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # 1xx: the final answer follows
            self.headers = []
            return
        self.head_done = True
        self.until_eof = self.status not in (204, 304) and _close_delimited(self.headers)

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            # asked now: the parser forgets once the next message may begin
            self.keep_alive = self.parser.should_keep_alive()

    # -- the request side ---------------------------------------------------------------
    def send(self, head: bytes, body: bytes) -> None:
        """Write one request (head and body in one write)."""
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body)

    async def wait(self) -> None:
        """Until the parser has news (head, body, end) or the connection failed."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self.loop.create_future()
        self._timer = self.loop.call_later(self.read_timeout_s, self._timed_out)
        try:
            await waiter
        finally:
            self._timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        """The body bytes received so far (b"" when none)."""
        if not self.pieces:
            return b""
        data = self.pieces.popleft() if len(self.pieces) == 1 else b"".join(self.pieces)
        self.pieces.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: TransportError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _timed_out(self) -> None:
        self._fail(ReadTimeout(f"no answer within {self.read_timeout_s:g} s"))
        self.abort()

    def abort(self) -> None:
        """Drop the connection (an answer given up half-read, or a failure)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def reusable(self) -> bool:
        """Whether the last answer ended cleanly with keep-alive."""
        return self.complete and self.keep_alive and not self.closed and self.error is None


class Answer:
    """An engine's answer: status and headers now, the body as it arrives."""

    def __init__(self, client: EngineHttp, key: tuple[str, str, int],
                 conn: _Connection) -> None:
        self._client, self._key, self._conn = client, key, conn
        self.status_code = conn.status
        self.headers: dict[str, str] = {}
        for name, value in conn.headers:
            text = name.decode("latin-1")
            self.headers[text] = (f"{self.headers[text]}, " if text in self.headers
                                  else "") + value.decode("latin-1")
        self._content: bytes | None = None
        self._done = False

    @property
    def is_consumed(self) -> bool:
        """Whether the body was read whole (:meth:`read`)."""
        return self._content is not None

    @property
    def content(self) -> bytes:
        """The body read by :meth:`read`."""
        if self._content is None:
            raise RuntimeError("the answer's body has not been read")
        return self._content

    async def read_some(self) -> tuple[bytes, bool]:
        """The body bytes received by now (waiting until some arrive), and whether the
        body ended with them (the connection is then given back). A piece is never held
        back for a later one: what has arrived is returned at once."""
        conn = self._conn
        try:
            while True:
                data = conn.take()
                if conn.complete:
                    break
                if data:
                    return data, False
                await conn.wait()
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        return data, True

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in the pieces received (all bytes received by the
        time the reader comes back are joined into one)."""
        conn = self._conn
        try:
            while True:
                data = conn.take()
                if data:
                    yield data
                    continue
                if conn.complete:
                    break
                await conn.wait()
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()

    async def read(self) -> bytes:
        """The whole body (kept in :attr:`content`)."""
        if self._content is None:
            self._content = b"".join([piece async for piece in self.chunks()])
        return self._content

    def json(self) -> Any:
        """The body read by :meth:`read`, as JSON (``ValueError`` when it is not)."""
        return loads(self.content)

    async def aclose(self) -> None:
        """Give the connection back (answer read whole) or drop it (not)."""
        if self._done:
            return
        self._done = True
        self._client.release(self._key, self._conn)


class EngineHttp:
    """Pooled keep-alive connections to the engines, by origin."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float,
                 keepalive: int = KEEPALIVE) -> None:
        """Time-outs: to connect, and between any two reads of an answer."""
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.keepalive = keepalive
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body`` to ``url``; the answer once its head has arrived."""
        scheme, host, port, path = origin_of(url)
        key = (scheme, host, port)
        head = _head(path, host, port, len(body), headers)
        conn = self._pooled(key)
        if conn is not None:
            try:
                return await self._exchange(key, conn, head, body)
            except RemoteProtocolError:
                if conn.answered:
                    raise
                # closed by the engine while it sat in the pool (no answer byte came):
                # once more on a new connection, as urllib3 and aiohttp do
        return await self._exchange(key, await self._connect(key), head, body)

    async def _exchange(self, key: tuple[str, str, int], conn: _Connection, head: bytes,
                        body: bytes) -> Answer:
        try:
            conn.send(head, body)
            while not conn.head_done:
                await conn.wait()
        except BaseException:
            conn.abort()
            raise
        return Answer(self, key, conn)

    def _pooled(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        fresh = time.monotonic() - IDLE_S
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closing
            if not conn.closed and conn.idle_since > fresh:
                return conn
            conn.abort()
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        context = self._ssl_context() if scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self.read_timeout_s), host, port, ssl=context)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {host}:{port} within "
                                 f"{self.connect_timeout_s:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"{host}:{port}: {exc.strerror or exc}") from None
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def release(self, key: tuple[str, str, int], conn: _Connection) -> None:
        """Pool ``conn`` when its answer ended cleanly, else drop it."""
        if not conn.reusable or self._closed:
            conn.abort()
            return
        idle = self._idle.setdefault(key, collections.deque())
        if len(idle) >= self.keepalive:
            idle.popleft().abort()
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def aclose(self) -> None:
        """Close every idle connection; answers still open close theirs when done."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().abort()


@lru_cache(maxsize=256)
def _fixed_head(path: str, host: str, port: int, extra: tuple[tuple[str, str], ...]) -> bytes:
    authority = f"[{host}]" if ":" in host else host  # an IPv6 literal (RFC 9110 7.2)
    lines = [f"POST {_clean(path)} HTTP/1.1", f"Host: {authority}:{port}",
             "Content-Type: application/json", "Accept: */*"]
    lines += [f"{_clean(name)}: {_clean(value)}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _head(path: str, host: str, port: int, length: int, headers: Mapping[str, str]) -> bytes:
    """The request head: the fixed part (cached per path and extra headers), then the
    per-request ``X-Request-Id`` (when given) and length."""
    request_id = headers.get(REQUEST_ID)
    extra = tuple((k, v) for k, v in headers.items() if k != REQUEST_ID)
    tail = f"Content-Length: {length}\r\n\r\n"
    if request_id is not None:
        tail = f"{REQUEST_ID}: {_clean(request_id)}\r\n" + tail
    return _fixed_head(path, host, port, extra) + tail.encode("latin-1")


def _clean(text: str) -> str:
    """Header text comes from settings and clients: no line break or NUL sneaks in."""
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"a request header holds a line break or NUL: {text[:64]!r}")
    return text


def _close_delimited(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer with these (lower-cased) headers ends its body by closing the
    connection: no ``Content-Length``, and no ``Transfer-Encoding`` ending in chunked."""
    coding = b""
    for name, value in headers:
        if name == b"content-length":
            return False
        if name == b"transfer-encoding":
            coding = value
    return coding.rsplit(b",", 1)[-1].strip().lower() != b"chunked"
