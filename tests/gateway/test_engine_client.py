"""The engine legs' HTTP/1.1 client (:mod:`engines.pd.http`) against a real socket server
that answers what each test scripts: keep-alive reuse, no cookies, chunked streams,
failures, and a half-read answer closing its connection."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from engines.pd.http import ConnectError, EngineHttp, ReadTimeout, RemoteProtocolError, loads

Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """Reads each request (head and Content-Length body) and lets ``script`` answer."""

    def __init__(self, script: Script, host: str = "127.0.0.1") -> None:
        self.script, self.host = script, host
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = asyncio.Event()  # a connection ended from the client's side
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        port = self.server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.requests.append(head + await reader.readexactly(length))
                await self.script(head, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()


async def _answer(head: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Set-Cookie: session=one-client; Path=/\r\nContent-Length: 12\r\n\r\n"
                 b'{"ok": true}')
    await writer.drain()


def _client(read_timeout_s: float = 10.0) -> EngineHttp:
    return EngineHttp(connect_timeout_s=5.0, read_timeout_s=read_timeout_s)


def test_keep_alive_reuses_one_connection_and_never_sends_cookies() -> None:
    async def run() -> Server:
        server = Server(_answer)
        async with server as url:
            client = _client()
            for _ in range(3):
                answer = await client.post(f"{url}/v1/completions", b"{}", {"X-Request-Id": "r1"})
                assert answer.status_code == 200 and await answer.read() == b'{"ok": true}'
                assert answer.headers["set-cookie"].startswith("session=")
            await client.aclose()
        return server

    server = asyncio.run(run())
    assert server.connections == 1 and len(server.requests) == 3
    assert all(b"cookie" not in r.lower().replace(b"set-cookie", b"") for r in server.requests)
    assert all(b"\r\nX-Request-Id: r1\r\n" in r for r in server.requests)


def test_a_pooled_connection_the_engine_closed_unanswered_is_replaced_once() -> None:
    served: dict[int, int] = {}

    async def close_second(head: bytes, writer: asyncio.StreamWriter) -> None:
        served[id(writer)] = served.get(id(writer), 0) + 1
        if served[id(writer)] == 2:  # the keep-alive race: closed, nothing answered
            writer.transport.abort()
            return
        await _answer(head, writer)

    async def run() -> Server:
        server = Server(close_second)
        async with server as url:
            client = _client()
            for _ in range(2):
                answer = await client.post(f"{url}/x", b"{}", {})
                assert answer.status_code == 200 and await answer.read() == b'{"ok": true}'
            await client.aclose()
        return server

    server = asyncio.run(run())
    assert server.connections == 2 and len(server.requests) == 3


def test_a_chunked_stream_arrives_piece_by_piece_without_its_framing() -> None:
    release = asyncio.Event()

    async def stream(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata 1\r\n")
        await writer.drain()
        await release.wait()  # the client reads the first piece before the rest exists
        writer.write(b"6\r\ndata 2\r\n0\r\n\r\n")
        await writer.drain()

    async def run() -> list[bytes]:
        async with Server(stream) as url:
            client = _client()
            answer = await client.post(f"{url}/x", b"{}", {})
            pieces = []
            async for piece in answer.chunks():
                pieces.append(piece)
                release.set()
            await client.aclose()
            return pieces

    assert asyncio.run(run()) == [b"data 1", b"data 2"]


def test_an_ipv6_literal_is_sent_in_brackets_in_the_host_header() -> None:
    async def run() -> tuple[Server, int]:
        server = Server(_answer, host="::1")
        async with server as url:
            client = _client()
            answer = await client.post(f"{url}/v1/completions", b"{}", {})
            assert answer.status_code == 200 and await answer.read() == b'{"ok": true}'
            await client.aclose()
            return server, int(url.rsplit(":", 1)[1])

    server, port = asyncio.run(run())
    assert f"\r\nHost: [::1]:{port}\r\n".encode() in server.requests[0]


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_a_body_without_length_or_chunking_ends_when_the_engine_closes(version: bytes) -> None:
    release = asyncio.Event()

    async def until_close(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/" + version + b" 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"\r\ndata 1")
        await writer.drain()
        await release.wait()  # the first piece is read before the rest exists
        writer.write(b"data 2")
        await writer.drain()
        writer.close()  # the end of the body
        await writer.wait_closed()

    async def run() -> tuple[Server, list[tuple[bytes, bool]], bytes]:
        server = Server(until_close)
        async with server as url:
            client = _client()
            answer = await client.post(f"{url}/x", b"{}", {})
            pieces = [await answer.read_some()]
            release.set()
            while not pieces[-1][1]:
                pieces.append(await answer.read_some())
            release.clear()
            second = await client.post(f"{url}/x", b"{}", {})  # not from the pool
            release.set()
            whole = await second.read()
            await client.aclose()
            return server, pieces, whole

    server, pieces, whole = asyncio.run(run())
    assert b"".join(p for p, _ in pieces) == b"data 1data 2" and pieces[0] == (b"data 1", False)
    assert whole == b"data 1data 2" and server.connections == 2


def test_a_close_delimited_body_cut_by_a_reset_is_a_transport_error() -> None:
    async def reset(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart")
        await writer.drain()
        await asyncio.sleep(0.05)
        # a reset, not a close: linger 0 makes close send RST
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def run() -> None:
        async with Server(reset) as url:
            client = _client()
            answer = await client.post(f"{url}/x", b"{}", {})
            with pytest.raises(RemoteProtocolError):
                await answer.read()
            await client.aclose()

    asyncio.run(run())


def test_an_answer_given_up_half_read_closes_its_connection() -> None:
    async def endless(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await writer.drain()

    async def run() -> Server:
        server = Server(endless)
        async with server as url:
            client = _client()
            answer = await client.post(f"{url}/x", b"{}", {})
            async for _ in answer.chunks():
                break
            await answer.aclose()
            await asyncio.wait_for(server.closed.wait(), 20)
            await client.aclose()
        return server

    assert asyncio.run(run()).closed.is_set()


def test_failures_are_transport_errors() -> None:
    async def hang_up(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async def cut_mid_stream(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        writer.transport.abort()

    async def read_all(client: EngineHttp, url: str) -> list[bytes]:
        answer = await client.post(f"{url}/x", b"{}", {})
        pieces = []
        async for piece in answer.chunks():
            pieces.append(piece)
            while not answer._conn.closed:  # the loss arrives while nobody waits
                await asyncio.sleep(0.01)
        return pieces

    async def silent(head: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    async def run() -> None:
        async with Server(hang_up) as url:
            answer = await _client().post(f"{url}/x", b"{}", {})
            with pytest.raises(RemoteProtocolError):
                await answer.read()
        async with Server(cut_mid_stream) as url:
            # the loss arrives while nobody waits: the next read raises at once, not
            # after the read time-out
            with pytest.raises(RemoteProtocolError):
                await asyncio.wait_for(read_all(_client(read_timeout_s=60), url), 20)
        async with Server(silent) as url:
            with pytest.raises(ReadTimeout):
                await _client(read_timeout_s=0.2).post(f"{url}/x", b"{}", {})
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectError):
            await _client().post(f"http://127.0.0.1:{port}/x", b"{}", {})

    asyncio.run(run())


def test_header_text_with_a_line_break_is_refused_before_sending() -> None:
    async def run() -> None:
        async with Server(_answer) as url:
            with pytest.raises(ValueError, match="line break"):
                await _client().post(f"{url}/x", b"{}", {"X-Request-Id": "a\r\nEvil: 1"})

    asyncio.run(run())


@pytest.mark.parametrize("text", [
    b'{"model": "m", "prompt": [1, 2, 3], "stream": true}', b'[NaN, Infinity, 1e400]',
    b'"\\ud800"', b'{"a": 1, "a": 2}', b'[123456789012345678901234567890, -0.0, 1.5e-7]',
    '{"é": "ü"}'.encode("utf-16")])
def test_loads_reads_json_as_the_standard_library_does(text: bytes) -> None:
    assert repr(loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", [b"", b"{", b"[1,]", b"\xff"])
def test_loads_refuses_what_is_not_json(text: bytes) -> None:
    with pytest.raises(ValueError):
        loads(text)
