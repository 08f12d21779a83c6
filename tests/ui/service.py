"""A real ``toposched serve`` for the page's tests, and a server-sent-events reader."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port, stop_process
from tests.sidecar.harness import wait_for

ROOT = Path(__file__).parents[2]
WORKER_TOKEN, OPERATOR_TOKEN = "ui-worker-token", "ui-operator-token"


@dataclass
class Service:
    """A running scheduler: its URL and log."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def client(self, token: str | None = WORKER_TOKEN) -> httpx.Client:
        """An HTTP client for the API (with a bearer token unless ``token`` is None)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, trust_env=False)


@contextmanager
def serve(workdir: Path, fabric: Path | None = None, *, tokens: bool = True,
          start_timeout_s: float = 60, **settings: str) -> Iterator[Service]:
    """Start ``toposched serve`` on a free port; ``settings`` become TOPOSCHED_* variables."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           **{f"TOPOSCHED_{key.upper()}": value for key, value in settings.items()}}
    if tokens:
        env |= {"TOPOSCHED_WORKER_TOKEN": WORKER_TOKEN,
                "TOPOSCHED_OPERATOR_TOKEN": OPERATOR_TOKEN}
    command = [sys.executable, "-m", "api.cli.main", "serve", "--port", str(port)]
    if fabric is not None:
        command += ["--fabric", str(fabric)]
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT)
    service = Service(f"http://127.0.0.1:{port}", log, process)
    try:
        wait_for(lambda: _healthy(service), start_timeout_s, f"the scheduler (log: {log})")
        yield service
    finally:
        stop_process(process)


def _healthy(service: Service) -> bool:
    if service.process.poll() is not None:
        raise AssertionError(f"toposched serve exited: {service.log.read_text()[-2000:]}")
    return httpx.get(f"{service.url}/healthz", timeout=1, trust_env=False).status_code == 200


class EventReader:
    """Reads a server-sent event stream on a thread; :meth:`next` takes events in order."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(timeout=httpx.Timeout(30, read=60), trust_env=False)
        self._response = self._http.send(self._http.build_request("GET", url, headers=headers),
                                         stream=True)
        self.status = self._response.status_code
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        name, data = "message", []
        try:
            for line in self._response.iter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    self._events.put((name, json.loads("\n".join(data))))
                    name, data = "message", []
        except httpx.HTTPError:
            pass  # closed by the test

    def next(self, name: str, match: Any = None, timeout_s: float = 20.0) -> Any:
        """The data of the next ``name`` event (for which ``match(data)`` holds, if given)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {name} event in {timeout_s} s")
            try:
                got, data = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if got == name and (match is None or match(data)):
                return data

    def names(self, count: int, timeout_s: float = 20.0) -> list[str]:
        """The names of the next ``count`` events."""
        return [self._events.get(timeout=timeout_s)[0] for _ in range(count)]

    def close(self) -> None:
        """Close the stream."""
        self._response.close()
        self._http.close()
