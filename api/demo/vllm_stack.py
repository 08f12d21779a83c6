"""The processes of ``toposched demo --engines vllm``: two real vLLM engines (CPU build,
vLLM's NixlConnector over host memory) and one ``toposched gateway`` in front of them.

The engines come from :mod:`engines.launch` (the tiny random-weight model, one core
each, NIXL's busy progress thread off). On the example fabric both stand on host
``a1-r0-h00`` (the prefill on gpu0, the decode on gpu4: an NVLink pair), because both
really run on this machine: their NIXL side channels are loopback addresses, which the
gateway accepts only for engines on one host. :meth:`VllmStack.stop` ends every process
it started, whatever state the start reached.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from api.demo.cluster import DemoError
from engines.launch import (
    EngineOptions,
    VllmEngine,
    free_port,
    start_engines,
    write_tiny_model,
)

#: The fabric host both engines stand on, and each engine's GPU there.
HOST = "a1-r0-h00"
ENGINES = (
    (EngineOptions("vllm-prefill", role="prefill", nixl=True), 0),
    (EngineOptions("vllm-decode", role="decode", nixl=True), 4),
)
GATEWAY_START_S = 60.0
Say = Callable[[str], None]


@dataclass
class VllmStack:
    """The engines and the gateway of one demo run (all logs in ``workdir``)."""

    workdir: Path
    engines: list[VllmEngine] = field(default_factory=list)
    gateway: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def prefill(self) -> VllmEngine:
        """The prefill engine."""
        return self.engines[0]

    @property
    def decode(self) -> VllmEngine:
        """The decode engine."""
        return self.engines[1]

    def start(self, fabric: Path, say: Say) -> None:
        """Write the model, start both engines (progress through ``say``), then the
        gateway; raises :class:`DemoError` (or the launcher's errors) when one fails."""
        say("writing the tiny random-weight model (2-layer Llama, byte tokenizer) …")
        model = write_tiny_model(self.workdir / "model")
        say(f"starting 2 vLLM engines on {len(os.sched_getaffinity(0))} CPU core(s): "
            "prefill and decode, NixlConnector (kv_both, host-memory KV buffers); "
            "usually 30-70 s …")
        started = time.monotonic()

        def ready(engine: VllmEngine) -> None:
            say(f"  {engine.name} answers after {time.monotonic() - started:.0f} s "
                f"({engine.base_url}, core {engine.cpu})")

        self.engines = start_engines(model, [options for options, _ in ENGINES],
                                     self.workdir, on_ready=ready)
        say("starting the gateway (toposched gateway) in front of them …")
        self._start_gateway(fabric, model)

    def _start_gateway(self, fabric: Path, model: Path) -> None:
        document = self.workdir / "engines.yaml"
        document.write_text(yaml.safe_dump({"version": 1, "instances": self.instances()}))
        self.port = free_port()
        command = [sys.executable, "-m", "api.cli.main", "gateway", "--instances",
                   str(document), "--fabric", str(fabric), "--port", str(self.port),
                   "--tokenizer", str(model)]
        with (self.workdir / "gateway.log").open("wb") as log:
            self.gateway = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self._wait_routable()

    def instances(self) -> list[dict[str, Any]]:
        """The engine instance document's entries (docs/gateway.md)."""
        return [engine.instance(host=HOST, gpus=[gpu], block_size=engine.options.block_size)
                .model_dump(mode="json", exclude_none=True)
                for engine, (_, gpu) in zip(self.engines, ENGINES, strict=True)]

    def _wait_routable(self) -> None:
        """Until the gateway answers and routes to both engines."""
        deadline = time.monotonic() + GATEWAY_START_S
        while time.monotonic() < deadline:
            assert self.gateway is not None
            if self.gateway.poll() is not None:
                raise DemoError(f"the gateway exited with {self.gateway.returncode}; see "
                                f"{self.workdir / 'gateway.log'}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                health = httpx.get(f"{self.url}/v1/gateway/health", timeout=2).json()
                if all(entry["in_routing"] for entry in health["engines"]) and \
                        len(health["engines"]) == len(self.engines):
                    return
            time.sleep(0.2)
        raise DemoError(f"the gateway did not route to both engines within "
                        f"{GATEWAY_START_S:.0f} s; see {self.workdir / 'gateway.log'}")

    def processes(self) -> Iterator[dict[str, Any]]:
        """Every process started (name, pid, ports), for the report."""
        for engine in self.engines:
            ports = [p for p in (engine.ports.http, engine.ports.kv, engine.ports.replay,
                                 engine.ports.side_channel) if p is not None]
            yield {"name": engine.name, "pid": engine.process.pid, "ports": ports,
                   "role": engine.options.role, "cpu": engine.cpu}
        if self.gateway is not None:
            yield {"name": "gateway", "pid": self.gateway.pid, "ports": [self.port],
                   "role": "gateway", "cpu": None}

    def stop(self) -> None:
        """Stop the gateway and the engines (SIGTERM, then SIGKILL to their process
        groups); a second Ctrl-C meanwhile is ignored so that nothing is left behind."""
        with _no_interrupts():
            self._stop_gateway()
            for engine in self.engines:  # both shut down at once, then each is waited for
                if engine.alive():
                    engine.process.terminate()
            for engine in self.engines:
                engine.stop()

    def _stop_gateway(self) -> None:
        if self.gateway is None:
            return
        if self.gateway.poll() is None:
            self.gateway.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.gateway.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.gateway.pid, signal.SIGKILL)
        self.gateway.wait(timeout=10)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """SIGINT ignored inside (on the main thread; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
