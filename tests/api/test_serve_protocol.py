"""``toposched serve``'s connection transport: a response's head goes out with its body."""

from __future__ import annotations

import asyncio

from api.cli.serve import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\n\r\n"


class Recorder:
    """The writes a transport received, one entry per call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_a_head_with_a_length_goes_out_with_the_body_in_one_write() -> None:
    async def body() -> list[bytes]:
        raw = Recorder()
        transport = HeadWithBody(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(HEAD)
        assert raw.writes == []  # held
        transport.write(b"ok")
        await asyncio.sleep(0)  # the fallback flush finds nothing left
        assert transport.get_extra_info("peername") == "info:peername"  # the rest delegated
        return raw.writes

    assert asyncio.run(body()) == [HEAD + b"ok"]


def test_a_streaming_head_is_written_at_once_and_a_lone_head_at_the_next_turn() -> None:
    async def body() -> tuple[list[bytes], list[bytes], bool]:
        loop = asyncio.get_running_loop()
        stream, lone = Recorder(), Recorder()
        HeadWithBody(stream, loop).write(STREAM_HEAD)  # type: ignore[arg-type]
        held = HeadWithBody(lone, loop)  # type: ignore[arg-type]
        held.write(HEAD)
        await asyncio.sleep(0)
        first = list(lone.writes)
        closing = HeadWithBody(Recorder(), loop)  # type: ignore[arg-type]
        closing.write(HEAD)
        closing.close()  # flushes before it closes
        inner: Recorder = closing._transport  # type: ignore[assignment]
        return stream.writes + first, inner.writes, inner.closed

    writes, closed_writes, closed = asyncio.run(body())
    assert writes == [STREAM_HEAD, HEAD]
    assert closed_writes == [HEAD] and closed
