"""A real ``toposched serve`` against slow and unauthenticated clients: tokens are
checked before bodies are read, trickled bodies and headers time out, nothing is held."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.service_builders import worker_json
from tests.servers import free_port
from tests.sidecar.harness import (
    AUTH,
    SERVER_TOKENS,
    START_TIMEOUT_S,
    WORKER_TOKEN,
    Proc,
    _cli,
    _spawn,
    wait_for,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]
LIMIT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A scheduler with 1 s body and header limits; yields its port."""
    port, log = free_port(), tmp_path_factory.mktemp("limits") / "serve.log"
    env = {**SERVER_TOKENS, "TOPOSCHED_BODY_TIMEOUT_S": str(LIMIT_S),
           "TOPOSCHED_HEADER_TIMEOUT_S": str(LIMIT_S)}
    proc = Proc(_spawn(_cli("serve", "--port", str(port)), log, env), log)
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                 .status_code == 200, START_TIMEOUT_S, "the scheduler")
        yield port
    finally:
        proc.stop(signal.SIGTERM, 10)


def _open(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head)
    return sock


def _answer(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic()


def _post_head(path: str, length: int, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{auth}\r\n").encode()


def test_trickled_bodies_get_408_and_their_connections_close(server: int) -> None:
    started = time.monotonic()
    socks = [_open(server, _post_head("/v1/kv-events", 100, WORKER_TOKEN) + b"[")
             for _ in range(60)]
    for sock in socks:
        sock.sendall(b"{")  # one more byte, then nothing
    answers = [_answer(sock) for sock in socks]
    for data, _ in answers:
        assert data.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"application/problem+json" in data
    assert max(closed for _, closed in answers) - started < 8 * LIMIT_S
    assert httpx.get(f"http://127.0.0.1:{server}/healthz", timeout=2).status_code == 200


def test_a_slow_body_without_a_token_is_refused_at_once(server: int) -> None:
    started = time.monotonic()
    sock = _open(server, _post_head("/v1/workers", 1000, None) + b"{")
    data, closed = _answer(sock)
    assert data.startswith(b"HTTP/1.1 401 "), data[:200]
    assert closed - started < LIMIT_S  # before any body timeout: the body is never read


def test_headers_that_never_finish_are_cut_off(server: int) -> None:
    started = time.monotonic()
    sock = _open(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    data, closed = _answer(sock)
    assert data == b""
    assert LIMIT_S * 0.9 < closed - started < 6 * LIMIT_S


def test_a_long_poll_is_not_mistaken_for_slow_headers(server: int) -> None:
    base = f"http://127.0.0.1:{server}"
    with httpx.Client(headers=AUTH, timeout=10) as client:  # kept alive across requests
        assert client.post(f"{base}/v1/workers", json=worker_json("poller", "decode", [])
                           ).status_code == 201
        started = time.monotonic()
        answer = client.get(f"{base}/v1/sidecars/poller/jobs", params={"wait_s": 3 * LIMIT_S})
        assert answer.status_code == 200 and answer.json() == {"jobs": []}
        assert time.monotonic() - started >= 3 * LIMIT_S * 0.9
        for _ in range(3):
            time.sleep(LIMIT_S * 0.5)
            assert client.get(f"{base}/healthz").status_code == 200
