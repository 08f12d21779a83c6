"""Store back-ends for the state tests: a fake clock, per-test stores, a durable Redis."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.state.memory import MemoryStore
from scheduler.state.redis_store import RedisStore
from scheduler.state.reservations import MemoryLoads
from tests.servers import RedisServer, free_port, redis_server_binary


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


Body = Callable[..., Awaitable[None]]


@dataclass
class Backend:
    """One kind of store; ``run`` gives a test body fresh, isolated stores of that kind."""

    kind: str
    url: str | None = None

    def run(self, body: Body, *, replicas: int = 1, loads: bool = False) -> None:
        """Run ``body(*stores, clock)`` in a new event loop; Redis replicas share a prefix."""
        asyncio.run(self._main(body, replicas, loads))

    async def _main(self, body: Body, replicas: int, loads: bool) -> None:
        clock = FakeClock()
        stores = self.open(clock, replicas, loads)
        try:
            await body(*stores, clock)
        finally:
            for store in stores:
                if isinstance(store, RedisStore):
                    await store.aclose()

    def open(self, clock: FakeClock, replicas: int, loads: bool) -> list[Any]:
        """``replicas`` views of one fresh state (memory: the same object each time)."""
        if self.kind == "memory":
            store: Any = MemoryLoads(clock=clock) if loads else MemoryStore(clock)
            return [store] * replicas
        assert self.url is not None
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        return [RedisStore(self.url, prefix=prefix, clock=clock) for _ in range(replicas)]


def start_durable_redis(port: int, data_dir: Path) -> RedisServer:
    """A private redis-server with an append-only file in ``data_dir`` (fsync always)."""
    return start_redis_with(port, "--appendonly", "yes", "--appendfsync", "always",
                            "--dir", str(data_dir))


def start_redis_with(port: int, *options: str) -> RedisServer:
    """A private, non-persistent redis-server with extra command-line ``options``."""
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", *options]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, process)
    wait_until_ready(server)
    return server


def wait_until_ready(server: RedisServer, timeout_s: float = 10.0) -> None:
    """Wait until the server answers PING (it may be loading its AOF first)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {server.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("redis-server did not answer within 10 s")


__all__ = ["Backend", "FakeClock", "free_port", "start_durable_redis", "start_redis_with",
           "wait_until_ready"]
