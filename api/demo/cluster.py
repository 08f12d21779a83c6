"""Starting and stopping the demo's processes: one scheduler and a few sidecars."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api.demo.workload import BLOCK_TOKENS
from topology.errors import ToposchedError

START_TIMEOUT_S = 30.0


class DemoError(ToposchedError):
    """A demo process did not start or stopped early."""

    title = "demo failed"


@dataclass(frozen=True)
class SidecarSpec:
    """One worker of the demo: its name, role, fabric GPU and KV pool (blocks; None: the
    cluster's default)."""

    name: str
    role: str
    gpu: str
    kv_blocks: int | None = None


@dataclass
class DemoCluster:
    """The scheduler and sidecar processes of one demo run."""

    workdir: Path
    model: str
    block_bytes: int
    #: KV blocks of a sidecar whose spec names none.
    kv_blocks: int = 256
    #: Tokens per KV block the sidecars register (the demo hashes prompts with it).
    block_tokens: int = BLOCK_TOKENS
    #: How long each fake engine's decode request runs before it releases its KV.
    decode_ms: float = 1000.0
    port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Authentication is on, as in a deployment: fresh tokens for every run.
    worker_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    operator_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def auth(self) -> dict[str, str]:
        """Headers of the demo's own calls (it acts for every worker: operator)."""
        return {"Authorization": f"Bearer {self.operator_token}"}

    @property
    def url(self) -> str:
        """The scheduler's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start_scheduler(self, fabric: Path) -> None:
        """Start ``toposched serve`` on a free loopback port with the fabric loaded."""
        self.port = _free_port()
        self._spawn("scheduler", ["serve", "--port", str(self.port), "--fabric", str(fabric)],
                    {"TOPOSCHED_WORKER_TOKEN": self.worker_token,
                     "TOPOSCHED_OPERATOR_TOKEN": self.operator_token})
        self._wait(lambda: httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200,
                   "scheduler")

    def start_sidecar(self, spec: SidecarSpec) -> None:
        """Start one sidecar and wait until it serves."""
        self.start_sidecars([spec])

    def start_sidecars(self, specs: Sequence[SidecarSpec]) -> None:
        """Start the sidecars (NIXL agents, fake engines) at once; wait until all serve."""
        states = {spec.name: self.workdir / f"{spec.name}.state.json" for spec in specs}
        for spec in specs:
            self._spawn(spec.name, [
                "sidecar", "--scheduler", self.url, "--name", spec.name, "--role", spec.role,
                "--gpu", spec.gpu, "--model", self.model,
                "--kv-blocks", str(spec.kv_blocks or self.kv_blocks),
                "--block-bytes", str(self.block_bytes), "--block-tokens",
                str(self.block_tokens), "--fake-decode-ms", str(self.decode_ms),
                "--state-file", str(states[spec.name]), "--poll-wait", "2",
                "--host", spec.gpu.split("/")[0]],
                {"TOPOSCHED_WORKER_TOKEN": self.worker_token})  # never on the command line
        for name, state in states.items():
            self._wait(_serving(state), f"sidecar {name}")

    def _spawn(self, name: str, args: list[str], env_extra: dict[str, str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "api.cli.main", *args],
                                            stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if ready():
                    return
            except (httpx.TransportError, OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise DemoError(f"{what} did not start within {START_TIMEOUT_S:.0f} s; see the logs "
                        f"in {self.workdir}")

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with {proc.returncode}; see "
                                f"{self.workdir / (name + '.log')}")

    def stop(self) -> None:
        """SIGTERM every process (sidecars drain and deregister), then SIGKILL stragglers."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _serving(state: Path) -> Callable[[], bool]:
    """Whether the sidecar writing ``state`` serves."""
    return lambda: state.exists() and json.loads(state.read_text())["state"] == "serving"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
