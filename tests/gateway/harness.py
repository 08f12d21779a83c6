"""Real processes for gateway tests: fake engines (``python -m engines.fakes``) and a
``toposched gateway`` in front of them, on free ports, on a small synthetic fabric."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.api.service_builders import cluster
from tests.servers import free_port, stop_process

ROOT = Path(__file__).parents[2]
MODEL = "fake-model"
START_TIMEOUT_S = 60.0


@dataclass
class Engine:
    """A running fake engine and how instances name it."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    instance: dict[str, Any]

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def state(self) -> dict[str, Any]:
        """What it served so far (``/_fake/state``)."""
        data: dict[str, Any] = httpx.get(f"{self.url}/_fake/state", timeout=5).json()
        return data

    def gate(self, open_: bool) -> None:
        """Hold streams after their first token (False) or let them run (True)."""
        httpx.post(f"{self.url}/_fake/gate", json={"open": open_}, timeout=5)

    def kill(self) -> None:
        """Kill it hard (SIGKILL), as a crashing engine goes."""
        self.process.kill()
        self.process.wait(timeout=10)


def start_engine(name: str, *, host: str, gpu: int, role: str = "both",
                 flavour: str = "vllm", port: int | None = None, **options: Any) -> Engine:
    """Start a fake engine (on ``port``, else a free one); ``options`` are
    :class:`FakeConfig` fields."""
    port = port or free_port()
    args = [sys.executable, "-m", "engines.fakes", "--port", str(port), "--flavour", flavour,
            "--role", role, "--model", MODEL]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    instance: dict[str, Any] = {
        "name": name, "engine": flavour, "role": role, "model": MODEL,
        "base_url": f"http://127.0.0.1:{port}", "host": host, "gpus": [gpu],
        "block_size": int(options.get("block_size", 16)),
        "tp_size": int(options.get("tp_size", 1))}
    if flavour == "vllm":
        instance["nixl_side_channel"] = f"127.0.0.1:{port}"
    else:
        instance["bootstrap_port"] = port
    engine = Engine(name, port, process, instance)
    wait_ready(f"{engine.url}/health", process)
    return engine


@dataclass
class Gateway:
    """A running ``toposched gateway`` and its engines."""

    port: int
    process: subprocess.Popen[bytes]
    engines: dict[str, Engine] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def load(self, worker: str) -> dict[str, int]:
        """The load the gateway holds on ``worker``."""
        data: dict[str, int] = httpx.get(f"{self.url}/v1/workers/{worker}/load",
                                         timeout=5).json()
        return data

    def stop(self) -> None:
        """Stop the gateway and its engines."""
        stop_process(self.process)
        for engine in self.engines.values():
            stop_process(engine.process)


def start_gateway(engines: Sequence[Engine], workdir: Path, *,
                  env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                  root: Path = ROOT) -> Gateway:
    """``toposched gateway`` over fake ``engines`` on a two-host synthetic fabric (the
    code of the checkout at ``root``: another one for a paired before/after bench)."""
    gateway = start_gateway_for([e.instance for e in engines], workdir, env=env, args=args,
                                root=root)
    gateway.engines = {e.name: e for e in engines}
    return gateway


def start_gateway_for(instances: Sequence[Mapping[str, Any]], workdir: Path, *,
                      env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                      root: Path = ROOT) -> Gateway:
    """``toposched gateway`` over ``instances`` (instance document entries) on a two-host
    synthetic fabric (hosts :data:`HOSTS`)."""
    fabric = workdir / "fabric.json"
    if not fabric.exists():
        cluster(hosts=2).save(fabric)
    document = workdir / "instances.yaml"
    document.write_text(yaml.safe_dump({"version": 1, "instances": list(map(dict, instances))}))
    port = free_port()
    command = [sys.executable, "-m", "api.cli.main", "gateway", "--instances", str(document),
               "--fabric", str(fabric), "--port", str(port), *args]
    with (workdir / "gateway.log").open("ab") as log:
        process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TOPOSCHED_DEBUG": "1", **(env or {})})
    gateway = Gateway(port, process)
    try:
        wait_ready(f"{gateway.url}/healthz", process)
    except BaseException:
        gateway.stop()
        raise
    return gateway


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll ``url`` until it answers 200 (the process must stay up)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_process(process)
    raise RuntimeError(f"{url} did not answer within {START_TIMEOUT_S} s")


def wait_for(check: Any, what: str, timeout_s: float = 20.0) -> None:
    """Poll ``check()`` until true (a state the system must reach, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def no_local_prefill_policy(workdir: Path) -> Path:
    """The packaged ``fabric-cost`` policy with local prefill off (a decode engine never
    prefills for itself), written to ``workdir``: with one prefill and one decode engine
    the router must pair them, so a decode engine holding the prompt's prefix can be the
    holder of a prefix pull to the prefill engine."""
    document = yaml.safe_load((ROOT / "config" / "profiles" / "fabric-cost.yaml").read_text())
    handler = document["plugins"][0]["parameters"]
    handler.update(local_prefill_max_tokens=0, local_prefill_min_hit=1.0)
    path = workdir / "no-local-prefill.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


HOSTS = ("z0-p0-r0-h00", "z0-p0-r1-h00")
