"""Real vLLM engines (CPU build) on this machine: a tiny random-weight model, started,
pinned, stopped. Used by ``toposched demo --engines vllm`` and by the real-engine tests.

The engines run from their own environment (vLLM pins its own torch):
``$TOPOSCHED_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` in the repository
(``./scripts/bootstrap.sh test`` creates it). When it is missing,
:class:`VllmEnvironmentMissing` says how to install it.

What is done for each engine (ENGINES.md, "Running real vLLM"):

* it serves :mod:`engines.tiny_model`'s random-weight Llama (head_dim 64, float32, a
  byte-level tokenizer whose id b is byte b, a chat template) as ``tiny-llama`` with
  ``--enforce-eager --seed 0 --block-size 32``, ``VLLM_CPU_KVCACHE_SPACE=1`` and free
  ports;
* optionally it publishes KV events on ZMQ (PUB bound on a free port, a replay ROUTER)
  and runs vLLM's NixlConnector with host-memory buffers (``VLLM_NIXL_SIDE_CHANNEL_HOST``
  127.0.0.1, a distinct side-channel port per engine);
* the two traps of a 2-core machine: each engine is pinned to its own core, and the
  pinning is re-applied to every thread of its process tree once ``/health`` answers
  (vLLM's NIXL worker pins itself to the last core); NIXL's progress thread is switched
  off by a ``sitecustomize`` on the engine's ``PYTHONPATH`` (it busy-polls a core).

Nothing heavy is imported here: the engines are other processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from engines.instance import EngineInstance
from topology.errors import InputError, ToposchedError

ROOT = Path(__file__).parents[1]
MODEL_NAME = "tiny-llama"
BLOCK_SIZE = 32
#: KV bytes per token of the tiny model: K and V × 2 layers × 2 KV heads × 64 × float32.
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 4
#: Seconds an engine may take to answer /health (~30 s alone, ~95 s on a busy machine).
START_TIMEOUT_S = float(os.environ.get("TOPOSCHED_VLLM_START_TIMEOUT_S", "420"))
NIXL_CONFIG = {"kv_connector": "NixlConnector", "kv_role": "kv_both",
               "kv_buffer_device": "cpu"}
#: Makes every NIXL agent the engine creates run without its busy-polling progress
#: thread: vLLM's own per-step NIXL calls keep transfers moving (ENGINES.md).
SITECUSTOMIZE = '''\
"""toposched's engine launcher: NIXL agents without the progress thread (engines/launch.py)."""
import importlib.abc
import importlib.util
import sys

_TARGETS = {"nixl._api", "nixl_cu12._api", "nixl_cu13._api"}


def _patch(module):
    config = getattr(module, "nixl_agent_config", None)
    init = getattr(config, "__init__", None)
    if init is not None and init.__defaults__:
        init.__defaults__ = (False, *init.__defaults__[1:])


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in _TARGETS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
'''


class VllmEnvironmentMissing(InputError):
    """The vLLM environment is not installed where toposched looks for it."""

    title = "vLLM environment missing"


class EngineStartError(ToposchedError):
    """An engine exited or did not answer in time (the message carries its log tail)."""

    title = "vLLM engine did not start"


def vllm_python() -> Path:
    """The interpreter of the vLLM environment (fails with the fix when it is missing)."""
    configured = os.environ.get("TOPOSCHED_VLLM_PYTHON")
    path = Path(configured) if configured else ROOT / ".venv-vllm" / "bin" / "python"
    if not path.exists():
        raise VllmEnvironmentMissing(
            f"no vLLM interpreter at {path}: run ./scripts/bootstrap.sh test (creates "
            ".venv-vllm) or set TOPOSCHED_VLLM_PYTHON")
    return path


def write_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write the tiny random-weight checkpoint (with tokenizer) into ``directory``."""
    script = Path(__file__).with_name("tiny_model.py")
    done = subprocess.run([str(vllm_python()), str(script), str(directory), str(seed)],
                          capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise EngineStartError(f"writing the tiny model failed: {tail[0]}")
    return directory


#: Ports handed out by this process (never handed out twice before they are bound).
_HANDED_OUT: set[int] = set()
#: Where ports are looked for when the kernel's ephemeral range cannot be read.
_FALLBACK_RANGE = (20000, 32767)


def _unassigned_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range: ``bind(0)`` and outgoing connections
    never take them, so a port found free here stays free until the engine binds it.
    (A port from ``bind(0)`` did not: vLLM's own sockets took one between the check and
    the engine's bind, "Address already in use", in a CI-style run.)"""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_RANGE
    return (10000, low - 1) if low > 12000 else _FALLBACK_RANGE


def free_port() -> int:
    """A TCP port free on every interface now, outside the ephemeral range."""
    low, high = _unassigned_range()
    for _ in range(200):
        port = random.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise EngineStartError(f"no free TCP port found in {low}-{high}")


@dataclass(frozen=True)
class EngineOptions:
    """How to start one engine; ``role`` only labels its :class:`EngineInstance`."""

    name: str
    role: Literal["prefill", "decode", "both"] = "both"
    kv_events: bool = True
    nixl: bool = False
    block_size: int = BLOCK_SIZE
    max_model_len: int = 2048
    skip_tokenizer_init: bool = False
    #: Leave NIXL's busy-polling progress thread on (switched off by default).
    nixl_progress_thread: bool = False
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EnginePorts:
    """Free ports one engine listens on (None: that feature is off)."""

    http: int
    kv: int | None = None
    replay: int | None = None
    side_channel: int | None = None
    topic: str = ""

    @classmethod
    def pick(cls, options: EngineOptions) -> EnginePorts:
        """Fresh free ports for what ``options`` turns on."""
        http = free_port()
        kv, replay = (free_port(), free_port()) if options.kv_events else (None, None)
        return cls(http, kv, replay, free_port() if options.nixl else None,
                   f"kv@127.0.0.1:{http}@{MODEL_NAME}" if options.kv_events else "")


@dataclass
class VllmEngine:
    """A running vLLM OpenAI server over the tiny model."""

    options: EngineOptions
    ports: EnginePorts
    cpu: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def name(self) -> str:
        """The engine's (and its instance's) name."""
        return self.options.name

    @property
    def base_url(self) -> str:
        """OpenAI base URL, without /v1."""
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def kv_endpoint(self) -> str | None:
        """Where its KV-event publisher is bound (None: events off)."""
        return None if self.ports.kv is None else f"tcp://127.0.0.1:{self.ports.kv}"

    @property
    def replay_endpoint(self) -> str | None:
        """Its KV-event replay ROUTER (None: events off)."""
        port = self.ports.replay
        return None if port is None else f"tcp://127.0.0.1:{port}"

    def instance(self, *, host: str = "h0", gpus: Sequence[int] = (0,),
                 **overrides: Any) -> EngineInstance:
        """This engine as toposched declares it (fields replaced by ``overrides``)."""
        data: dict[str, Any] = {
            "name": self.name, "engine": "vllm", "role": self.options.role,
            "model": MODEL_NAME, "base_url": self.base_url, "host": host, "gpus": list(gpus),
            "dtype": "float32", "engine_version": "0.32.0"}
        if self.kv_endpoint is not None:
            data["kv_events"] = {"endpoint": self.kv_endpoint,
                                 "replay_endpoint": self.replay_endpoint,
                                 "topic": self.ports.topic}
        if self.ports.side_channel is not None:
            data["nixl_side_channel"] = f"127.0.0.1:{self.ports.side_channel}"
        data.update(overrides)
        return EngineInstance.model_validate(data)

    def get(self, path: str, timeout_s: float = 10.0) -> httpx.Response:
        """GET ``path`` on the engine."""
        return httpx.get(self.base_url + path, timeout=timeout_s)

    def post(self, path: str, body: dict[str, Any], timeout_s: float = 60.0) -> httpx.Response:
        """POST a JSON body to ``path`` on the engine."""
        return httpx.post(self.base_url + path, json=body, timeout=timeout_s)

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.process.poll() is None

    def healthy(self) -> bool:
        """Whether /health answers 200."""
        try:
            return self.get("/health", timeout_s=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def pin(self) -> None:
        """Pin every thread of the engine's process tree to its core."""
        for pid in process_tree(self.process.pid):
            for tid in _threads(pid):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, {self.cpu})

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the engine's log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the engine's whole process group (an engine crash)."""
        self._kill_group()
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server (it stops its engine core); SIGKILL its process group if
        anything of it outlives ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        self._kill_group()
        self.process.wait(timeout=10)

    def _kill_group(self) -> None:
        # The engine was started in its own session: its group holds only its processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        tree.append(pid)
        queue.extend(children.get(pid, ()))
    return tree


def parent_of(pid: int) -> int | None:
    """The parent of process ``pid`` (None: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _command(model_dir: Path, options: EngineOptions, ports: EnginePorts) -> list[str]:
    args = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(ports.http), "--enforce-eager",
            "--seed", "0", "--block-size", str(options.block_size), "--dtype", "float32",
            "--max-model-len", str(options.max_model_len), "--enable-prefix-caching",
            "--disable-uvicorn-access-log"]
    if options.skip_tokenizer_init:
        args.append("--skip-tokenizer-init")
    if ports.kv is not None:
        args += ["--kv-events-config", json.dumps({
            "enable_kv_cache_events": True, "publisher": "zmq",
            "endpoint": f"tcp://*:{ports.kv}", "replay_endpoint": f"tcp://*:{ports.replay}",
            "topic": ports.topic})]
    if options.nixl:
        args += ["--kv-transfer-config", json.dumps(NIXL_CONFIG)]
    return [*args, *options.extra_args]


def _environment(site_dir: Path, options: EngineOptions, ports: EnginePorts
                 ) -> dict[str, str]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1",
           "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    if not options.nixl_progress_thread:
        env["PYTHONPATH"] = str(site_dir)
    if ports.side_channel is not None:
        env.update(VLLM_NIXL_SIDE_CHANNEL_HOST="127.0.0.1",
                   VLLM_NIXL_SIDE_CHANNEL_PORT=str(ports.side_channel))
    env.update(dict(options.extra_env))
    return env


def site_dir(workdir: Path) -> Path:
    """A directory holding the ``sitecustomize`` that turns NIXL's progress thread off."""
    site = workdir / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return site


def launch(model_dir: Path, options: EngineOptions, workdir: Path, cpu: int) -> VllmEngine:
    """Start one engine (does not wait for it); pinned to ``cpu`` from the start."""
    log = workdir / f"{options.name.replace('/', '_')}.log"
    ports = EnginePorts.pick(options)
    env = _environment(site_dir(workdir), options, ports)
    with log.open("wb") as out:
        process = subprocess.Popen(_command(model_dir, options, ports), cwd=workdir,
                                   stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    os.sched_setaffinity(process.pid, {cpu})  # its children inherit the mask
    return VllmEngine(options, ports, cpu, process, log)


def wait_ready(engine: VllmEngine, timeout_s: float = START_TIMEOUT_S) -> VllmEngine:
    """Wait until /health answers, then re-pin every thread; a dead or late engine fails
    with its log tail."""
    deadline = time.monotonic() + timeout_s
    while not engine.healthy():
        if not engine.alive():
            raise EngineStartError(f"vLLM engine {engine.name} exited with "
                                   f"{engine.process.returncode}:\n{engine.log_tail()}")
        if time.monotonic() > deadline:
            engine.stop()
            raise EngineStartError(f"vLLM engine {engine.name} not ready after "
                                   f"{timeout_s:.0f} s:\n{engine.log_tail()}")
        time.sleep(0.5)
    engine.pin()
    return engine


def start_engines(model_dir: Path, options: Sequence[EngineOptions], workdir: Path,
                  first_cpu: int = 0, *, on_ready: Callable[[VllmEngine], None] | None = None
                  ) -> list[VllmEngine]:
    """Start engines side by side (each on its own core, round robin) and wait for all
    (``on_ready`` hears of each as it answers); if one fails, all are stopped."""
    cpus = sorted(os.sched_getaffinity(0))
    engines: list[VllmEngine] = []

    def ready(engine: VllmEngine) -> None:
        wait_ready(engine)
        if on_ready is not None:
            on_ready(engine)

    pool = ThreadPoolExecutor(max(len(options), 1))
    try:
        for i, option in enumerate(options):
            engines.append(launch(model_dir, option, workdir, cpus[(first_cpu + i) % len(cpus)]))
        list(pool.map(ready, engines))
    except BaseException:
        # stopped first: the waits still running then see a dead engine and end at once
        # (an interrupted start does not sit out the engines' start-up)
        for engine in engines:
            engine.stop()
        raise
    finally:
        pool.shutdown(wait=True)
    return engines

