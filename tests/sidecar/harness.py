"""Real processes for sidecar tests: a ``toposched serve`` and ``toposched sidecar``s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.servers import free_port

ROOT = Path(__file__).parents[2]
START_TIMEOUT_S = 60.0  # generous: 2 shared cores under other jobs start processes slowly
#: Every real-process test runs with authentication on, as a deployment would.
WORKER_TOKEN, OPERATOR_TOKEN = "harness-worker-token", "harness-operator-token"
#: The scheduler's environment: both tokens.
SERVER_TOKENS = {"TOPOSCHED_WORKER_TOKEN": WORKER_TOKEN,
                 "TOPOSCHED_OPERATOR_TOKEN": OPERATOR_TOKEN}
#: What a sidecar gets: the worker token, in its environment (never on its command line).
SIDECAR_TOKEN = {"TOPOSCHED_WORKER_TOKEN": WORKER_TOKEN}
#: Headers of the tests' own calls (operators may do anything).
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def wait_for(check: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.05) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except (httpx.TransportError, ValueError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli.main", *args]


@dataclass
class Proc:
    """A started process with its log file."""

    popen: subprocess.Popen[bytes]
    log: Path
    state_file: Path | None = None

    def text(self) -> str:
        """The process's output so far."""
        return self.log.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        """The sidecar's state file."""
        assert self.state_file is not None
        data: dict[str, Any] = json.loads(self.state_file.read_text())
        return data

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL after ``timeout_s``)."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(f"process did not exit on {sig}:\n{self.text()}") from None


def _spawn(args: list[str], log: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=full_env)


@dataclass
class Cluster:
    """A scheduler plus the sidecars started against it."""

    url: str
    workdir: Path
    server: Proc
    sidecars: dict[str, Proc] = field(default_factory=dict)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0, headers=AUTH))

    def sidecar(self, name: str, *, kv_blocks: int = 32, block_bytes: int = 16384,
                extra: tuple[str, ...] = (), wait: bool = True,
                env: dict[str, str] | None = None, decode_ms: float = -1) -> Proc:
        """Start ``toposched sidecar`` and wait until it registered (``env``: instead of
        the worker token in its environment). ``decode_ms``: how long the fake engine's
        requests run before their blocks are released (default: never, so that tests
        see the blocks they moved stay where they are)."""
        file_name = name.replace("/", "_")  # placement instance ids hold a "/"
        state = self.workdir / f"{file_name}.state.json"
        state.unlink(missing_ok=True)
        log = self.workdir / f"{file_name}.log"
        args = _cli("sidecar", "--scheduler", self.url, "--name", name, "--kv-blocks",
                    str(kv_blocks), "--block-bytes", str(block_bytes), "--poll-wait", "2",
                    "--state-file", str(state), "--host", "loopback",
                    "--fake-decode-ms", str(decode_ms), *extra)
        proc = Proc(_spawn(args, log, SIDECAR_TOKEN if env is None else env), log, state)
        self.sidecars[name] = proc
        if wait:
            wait_for(lambda: self._serving(proc), START_TIMEOUT_S, f"sidecar {name}")
        return proc

    def _serving(self, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"sidecar exited {proc.popen.returncode}:\n{proc.text()}")
        return proc.state_file is not None and proc.state_file.exists() and \
            proc.state()["state"] == "serving"

    def free_blocks(self, name: str) -> int:
        """A live worker's free KV blocks at the scheduler."""
        found = [w["free_blocks"] for w in self.http.get(f"{self.url}/v1/workers").json()
                 if w["registration"]["name"] == name]
        assert found, f"{name} is not registered"
        count: int = found[0]
        return count

    def draining(self, name: str) -> bool:
        """Whether live worker ``name`` is marked draining at the scheduler."""
        found = [w["draining"] for w in self.http.get(f"{self.url}/v1/workers").json()
                 if w["registration"]["name"] == name]
        assert found, f"{name} is not registered"
        return bool(found[0])

    def workers(self) -> list[str]:
        """Names of the live workers."""
        return [w["registration"]["name"] for w in self.http.get(f"{self.url}/v1/workers").json()]

    def submit(self, **request: Any) -> httpx.Response:
        """POST /v1/transfers."""
        return self.http.post(f"{self.url}/v1/transfers", json=request)

    def transfer(self, plan_id: str) -> dict[str, Any]:
        """GET /v1/transfers/{id}."""
        data: dict[str, Any] = self.http.get(f"{self.url}/v1/transfers/{plan_id}").json()
        return data

    def finished(self, plan_id: str, reports: int | None = None,
                 timeout_s: float = 15.0) -> dict[str, Any]:
        """Wait (long-polling the record: first for its end, then for more reports)
        until the transfer left ``pending`` and has ``reports`` reports (default: one
        per side that reports; a READ's passive target sends none)."""
        deadline = time.monotonic() + timeout_s
        version = 0
        while True:
            response = self.http.get(f"{self.url}/v1/transfers/{plan_id}",
                                     params={"wait_s": 2.0, "after": version, "ended": True})
            record: dict[str, Any] = response.json()
            version = int(response.headers.get("x-record-version", version))
            if reports is None:
                plan = record["plan"]
                reports = 1 if plan["notify"] == "scheduler" and \
                    plan["initiator"] == plan["dst"]["worker"] else 2
            if record["state"] != "pending" and len(record["reports"]) >= reports:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s}s waiting for transfer "
                                     f"{plan_id}: {record['state']}, {len(record['reports'])} "
                                     "report(s)")


@contextmanager
def cluster(workdir: Path, *, mode: str = "READ", lease_ttl_s: float = 3.0,
            deadline_s: float = 5.0) -> Iterator[Cluster]:
    """A running scheduler; every process is stopped on exit."""
    port = free_port()
    env = {"TOPOSCHED_LEASE_TTL_S": str(lease_ttl_s), "TOPOSCHED_EXPIRE_INTERVAL_S": "0.2",
           "TOPOSCHED_TRANSFER_DEADLINE_S": str(deadline_s), **SERVER_TOKENS}
    server = Proc(_spawn(_cli("serve", "--port", str(port), "--mode", mode),
                         workdir / "serve.log", env), workdir / "serve.log")
    url = f"http://127.0.0.1:{port}"
    result = Cluster(url, workdir, server)
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
                 START_TIMEOUT_S, "the scheduler")
        yield result
    finally:
        for proc in result.sidecars.values():
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(5)
        result.http.close()
        server.stop(signal.SIGTERM, 10)
