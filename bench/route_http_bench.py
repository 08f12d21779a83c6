"""Route requests and transfer reports over real HTTP, in memory, on Redis, two replicas.

One run starts its own processes on loopback ports: ``toposched serve`` replicas
(512-GPU synthetic fabric, 256 registered workers: 128 prefill + 128 decode, no
sidecars, so plans queue up) and a private redis-server (``tests/servers.py``). It
measures, for each setup — one process in memory, one process on Redis, two replicas
sharing Redis with the client alternating between them:

* route closed loop: ``POST /v1/route`` with N requests in flight → requests per second,
  and the server's CPU time per request (``/proc/PID/stat`` utime + stime, Redis's
  own CPU counted apart);
* route open loop: requests sent at fixed rates on a schedule, latency measured from
  the scheduled send time (no coordinated omission); a run stops sending once a
  request is more than ``--saturated-s`` late (the server cannot keep up) and says so;

plus a ``GET /healthz`` closed-loop baseline (what the HTTP stack alone costs here) and
transfer reports: plans submitted with ``POST /v1/transfers`` between two registered
workers, then both sides' reports posted as fast as N connections allow, in memory
and on Redis.

The load generator is a minimal HTTP/1.1 keep-alive client on asyncio streams with
pre-encoded requests: httpx spent about as much CPU per request as the server, and
client and server share the machine's two cores. Writes bench/results/route_http.{md,json}.

    .venv/bin/python bench/route_http_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer, free_port, start_redis  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = 256
#: Findings kept with the report: the in-process profile behind the changes, and what
#: is left (cProfile over 1,000 route requests through the ASGI app, same setup).
NOTES = """
## Where the time goes, and what was changed

Profiled in process (cProfile, 1,000 route requests through the ASGI app, 256
workers) before this round, the route request cost about 2.6 ms of CPU; the
changes that took it to about 2.2 ms there (1.8–2.0 ms of server CPU per request
in the runs above; the previous report estimated 2.5–3 ms) were:

* the memory store keeps its worker listing and refreshes only the workers whose
  lease or free-block count changed (a route request changes two), and builds
  entries with `model_construct` (the fields were validated when stored) instead
  of validating 256 `WorkerEntry` objects per request;
* the snapshot builder reuses each Worker while the store hands out the same entry
  (or an equal registration with the same free count);
* the route endpoint's own dependencies are `async def`: FastAPI runs plain `def`
  dependencies in a worker thread (this and the Worker reuse above together saved
  ≈ 0.4 ms per request in process);
* the coordinator caches transport hints per (src, dst) pair while both
  registrations are unchanged (deriving them rebuilt a set of the fabric's 512
  GPU names per plan);
* `gc.freeze()` once the app has started: full collections no longer walk the
  start-up heap (modules, validators, the fabric). The old report traced its p99
  of 159 ms at 200 req/s to those pauses; that p99 is now about 4 ms;
* Redis: worker listing is one Lua script returning one JSON text instead of a
  pipeline of two commands per worker (redis-py parsed ~1,500 reply elements per
  route request: most of ~70 ms of CPU per route in process), and registrations
  are parsed once per distinct JSON text.

What is left per route request in memory (in-process profile, ≈ 2.2 ms): the
router and default policy ≈ 0.7 ms, FastAPI/Starlette routing, validation and the
auth dependency ≈ 0.6 ms (the auth dependency in `api/security.py` is a plain `def`,
so it still runs in a worker thread on every request), plan building ≈ 0.4 ms
(`build_plan` validates the plan twice: rules, then a dump/validate round trip),
the snapshot ≈ 0.4 ms (`Snapshot.__post_init__` rebuilds seven per-worker arrays
though only two free-block counts change), and uvicorn's pure-Python h11 parser
(neither httptools nor uvloop is installed; `/healthz` alone costs the server
about 0.25 ms). One server process is one core, so about 2 ms of CPU per request
caps it near 500 req/s; 1,000 req/s needs that halved, or several processes.

With Redis the server spends several ms of CPU per route on about ten Redis round
trips through redis-py (pure-Python RESP parsing; hiredis is not installed): the
listing, two allocations, the plan's existence check, the claim, the record
pipeline and two job pushes. Two replicas sharing Redis add throughput only as far
as the two cores allow (client, both replicas and redis-server share them).
Concurrent route requests on Redis (in one replica, whose store calls really yield,
or across replicas) race on the last free blocks of a worker: both see four free
blocks, one allocation fails, that request gets 503 (the errors column). Without
sidecars no block is ever freed, and the default policy fills one prefill/decode
pair before it moves to the next, so the race shows up about every 1,024 requests.

Two runs of this code on this machine gave 506 and 557 route req/s in memory (4 in
flight) and a p99 at 500 req/s of 506 and 90 ms: 500 req/s is at one process's
capacity here, so that tail is queueing and varies from run to run, while at
200 req/s the p99 stayed near 4 ms in both.

A transfer report with an unknown `tier` (e.g. `"rack"`) gets 500 instead of 422:
`TransferSample` rejects it after the report was accepted (seen while writing this
benchmark; reports here use `same_leaf`).
"""
MODEL = "llama-3-70b"

#: Sends request i; False when it was answered with an unexpected status.
Send = Callable[[int], Awaitable[bool]]


# -- processes ------------------------------------------------------------------------

def _fabric_file(directory: str) -> tuple[Path, list[str]]:
    from topology.synth import SynthParams, synth_cluster
    spec = synth_cluster(SynthParams(zones=2, pods_per_zone=2, racks_per_pod=4,
                                     hosts_per_rack=4))  # 64 hosts, 512 GPUs
    path = Path(directory) / "fabric.json"
    spec.save(path)
    return path, spec.gpu_names()


def _start_server(port: int, fabric: Path, redis_url: str | None) -> subprocess.Popen[bytes]:
    """A replica; its log goes next to the fabric file (shown if the run fails)."""
    env = {**os.environ, "TOPOSCHED_LEASE_TTL_S": "3600", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "api.cli.main", "serve", "--port", str(port),
               "--fabric", str(fabric), "--log-level", "warning"]
    if redis_url is not None:
        command += ["--redis", redis_url]
    with (fabric.parent / f"server-{port}.log").open("wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stderr=log)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- a minimal HTTP/1.1 keep-alive client ---------------------------------------------------

class Connection:
    """One keep-alive connection; requests are pre-encoded bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to ``127.0.0.1:port``."""
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, return (status, body)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in lines
                      if line.lower().startswith(b"content-length:"))
        return int(lines[0].split(b" ", 2)[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        """Close the socket."""
        self.writer.close()


def encode(method: str, path: str, body: Any = None) -> bytes:
    """An HTTP/1.1 request with a JSON body (or none)."""
    data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


class Pool:
    """Idle connections per port; a request takes one (or opens one) and gives it back."""

    def __init__(self) -> None:
        self._idle: dict[int, list[Connection]] = {}

    async def call(self, port: int, request: bytes) -> tuple[int, bytes]:
        """One request on some idle connection to ``port``."""
        idle = self._idle.setdefault(port, [])
        if idle:
            conn = idle.pop()
            try:
                answer = await conn.call(request)
            except (asyncio.IncompleteReadError, ConnectionError):
                # uvicorn closes keep-alive connections idle for 5 s: reconnect once.
                conn.close()
                conn = await Connection.open(port)
                answer = await conn.call(request)
        else:
            conn = await Connection.open(port)
            answer = await conn.call(request)
        idle.append(conn)
        return answer

    async def expect(self, port: int, request: bytes, status: int = 200) -> bytes:
        """One request that must answer ``status``; its body."""
        code, body = await self.call(port, request)
        if code != status:
            raise RuntimeError(f"{code}: {body[:300]!r}")
        return body

    def close(self) -> None:
        """Close every connection."""
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


async def _wait_ready(pool: Pool, port: int, limit_s: float = 90.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if (await pool.call(port, encode("GET", "/readyz")))[0] == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not become ready")


# -- load shapes -------------------------------------------------------------------------------

def _percentiles(latencies: Sequence[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


async def closed_loop(send: Send, count: int, lanes: int, limit_s: float) -> dict[str, Any]:
    """``lanes`` senders, each sending its next request when the last one returned."""
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    numbers = iter(range(count))

    async def lane() -> None:
        nonlocal errors
        for i in numbers:
            t0 = time.perf_counter()
            errors += not await send(i)
            latencies.append(time.perf_counter() - t0)
            if t0 - started > limit_s:
                return

    await asyncio.gather(*(lane() for _ in range(lanes)))
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "in_flight": lanes, "errors": errors,
            "seconds": elapsed, "rps": len(latencies) / elapsed, **_percentiles(latencies)}


async def open_loop(send: Send, rate: float, seconds: float,
                    saturated_s: float) -> dict[str, Any]:
    """Send request i at ``start + i / rate`` whatever the answers do (open loop).

    Stops sending when the oldest unanswered request is ``saturated_s`` late: past
    that the server does not keep up and latency is queueing delay only.
    """
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()
    pending: dict[int, float] = {}

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        pending[i] = scheduled
        errors += not await send(i)
        latencies.append(time.perf_counter() - scheduled)
        del pending[i]

    planned = int(rate * seconds)
    start = time.perf_counter() + 0.05
    sent = 0
    for i in range(planned):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if pending and time.perf_counter() - min(pending.values()) > saturated_s:
            break
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    await asyncio.gather(*list(tasks))
    elapsed = time.perf_counter() - start
    return {"rate": rate, "planned": planned, "requests": sent, "saturated": sent < planned,
            "errors": errors, "seconds": elapsed, "achieved_rps": sent / elapsed,
            **_percentiles(latencies)}


@contextmanager
def cpu_meter(pids: dict[str, int], into: dict[str, Any], requests: Callable[[], int]
              ) -> Iterator[None]:
    """Record the CPU ms each process in ``pids`` spent per request over the block."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    client = time.process_time()
    yield
    count = max(1, requests())
    into["cpu_ms_per_request"] = {name: (cpu_seconds(pid) - before[name]) * 1e3 / count
                                  for name, pid in pids.items()}
    into["cpu_ms_per_request"]["client"] = (time.process_time() - client) * 1e3 / count


async def measured_closed(send: Send, pids: dict[str, int], count: int, lanes: int,
                          limit_s: float) -> dict[str, Any]:
    """A closed-loop run with CPU per request of every process named in ``pids``."""
    result: dict[str, Any] = {}
    with cpu_meter(pids, result, lambda: int(result.get("requests", 0))):
        result.update(await closed_loop(send, count, lanes, limit_s))
    return result


# -- the workload ------------------------------------------------------------------------------

def _registration(name: str, role: str, gpus: list[str], blocks: int = 4096) -> dict[str, Any]:
    return {"name": name, "agent_name": name, "agent_metadata_b64": "bWQ=",
            "mem_type": "DRAM", "role": role, "model": MODEL, "host": "bench",
            "gpus": gpus, "layout": {"num_blocks": blocks, "regions": [
                {"name": "kv", "base_addr": 0x7F00_0000_0000, "block_bytes": 65536}]}}


def route_request(i: int) -> bytes:
    """A route request: 64 prompt families of 4 blocks (shared prefixes, as in chat)."""
    base = (i % 64) * 1000
    return encode("POST", "/v1/route", {"block_hashes": [base + 1, base + 2, base + 3,
                                                         base + 4 + i % 7],
                                        "model": MODEL, "request_id": f"r{i}"})


async def register_workers(pool: Pool, port: int, gpus: list[str]) -> None:
    """256 workers, two GPUs each, alternating prefill and decode."""
    for i in range(WORKERS):
        reg = _registration(f"w{i:03d}", "prefill" if i % 2 == 0 else "decode",
                            gpus[2 * i:2 * i + 2])
        await pool.expect(port, encode("POST", "/v1/workers", reg), 201)


def _sender(pool: Pool, ports: Sequence[int], make: Callable[[int], bytes],
            status: int = 200) -> Send:
    """Request i goes to ``ports[i % len(ports)]`` (replicas alternate)."""
    async def send(i: int) -> bool:
        code, body = await pool.call(ports[i % len(ports)], make(i))
        if code != status and code != 503:  # 503: unschedulable, counted as an error
            raise RuntimeError(f"{code}: {body[:300]!r}")
        return code == status
    return send


async def route_suite(pool: Pool, ports: Sequence[int], pids: dict[str, int],
                      args: argparse.Namespace, offset: int) -> dict[str, Any]:
    """Closed loop (with CPU per request) and open loops at each rate for one setup."""
    def shifted(start: int) -> Send:
        return _sender(pool, ports, lambda i: route_request(start + i))

    await closed_loop(shifted(offset), 200, 2, 20)  # warm-up: pair tables, caches
    result: dict[str, Any] = {"replicas": len(ports), "closed": await measured_closed(
        shifted(offset + 200), pids, args.requests, args.in_flight, args.limit_s)}
    result["open"] = [await open_loop(shifted(offset + 100_000 * (k + 1)), float(rate),
                                      args.open_s, args.saturated_s)
                      for k, rate in enumerate(args.rates.split(","))]
    return result


async def report_suite(pool: Pool, port: int, pids: dict[str, int], gpus: list[str],
                       args: argparse.Namespace) -> dict[str, Any]:
    """Submit plans between two fresh workers, then post both sides' reports."""
    blocks = args.transfers + 16
    for name, role, pair in (("t-src", "prefill", gpus[-4:-2]), ("t-dst", "decode", gpus[-2:])):
        await pool.expect(port, encode("POST", "/v1/workers",
                                       _registration(name, role, pair, blocks)), 201)
    plan = [f"bench-{os.getpid()}-{port}-{i}" for i in range(args.transfers)]
    submit = _sender(pool, [port], lambda i: encode("POST", "/v1/transfers", {
        "src": "t-src", "dst": "t-dst", "src_blocks": [i], "plan_id": plan[i]}), 201)
    submitted = await measured_closed(submit, pids, args.transfers, args.in_flight,
                                      args.limit_s)

    def report(i: int) -> bytes:  # READ: the decode side initiates; both sides report
        k, side = divmod(i, 2)
        worker, role = ("t-dst", "initiator") if side == 0 else ("t-src", "target")
        return encode("POST", f"/v1/transfers/{plan[k]}/report", {
            "plan_id": plan[k], "worker": worker, "role": role, "outcome": "ok",
            "bytes": 65536, "descriptors": 1, "duration_s": 0.0001, "gb_per_s": 0.6,
            "tier": "same_leaf"})

    reports = 2 * submitted["requests"]
    return {"submit": submitted, "reports": await measured_closed(
        _sender(pool, [port], report), pids, reports, args.in_flight, args.limit_s)}


# -- setups ------------------------------------------------------------------------------------

@dataclass
class Setup:
    """Running replicas (port → process) and their Redis, if any."""

    servers: dict[int, subprocess.Popen[bytes]]
    redis: RedisServer | None

    def pids(self) -> dict[str, int]:
        """Process ids by label: each replica, and redis-server."""
        pids = {f"server{k}": p.pid for k, p in enumerate(self.servers.values())}
        if self.redis is not None:
            pids["redis"] = self.redis.process.pid
        return pids


async def start_setup(pool: Pool, fabric: Path, replicas: int,
                      redis: RedisServer | None, db: int) -> Setup:
    """Start replicas (on Redis database ``db`` when ``redis`` is given), wait until ready."""
    url = None if redis is None else f"redis://127.0.0.1:{redis.port}/{db}"
    servers = {port: _start_server(port, fabric, url)
               for port in (free_port() for _ in range(replicas))}
    setup = Setup(servers, redis)
    try:
        for port in servers:
            await _wait_ready(pool, port)
    except BaseException:
        stop_setup(setup)
        raise
    return setup


def stop_setup(setup: Setup) -> None:
    """Stop the replicas (Redis is stopped by the caller)."""
    for process in setup.servers.values():
        _stop(process)


async def run_setup(name: str, fabric: Path, gpus: list[str], args: argparse.Namespace,
                    redis: RedisServer | None, replicas: int, db: int,
                    reports: bool) -> dict[str, Any]:
    """One setup: healthz baseline (first setup only), route suite, report suite."""
    pool = Pool()
    setup = await start_setup(pool, fabric, replicas, redis, db)
    try:
        ports = list(setup.servers)
        pids = setup.pids()
        await register_workers(pool, ports[0], gpus)
        result: dict[str, Any] = {"setup": name}
        if name == "memory":
            health = _sender(pool, ports, lambda i: encode("GET", "/healthz"))
            await closed_loop(health, 200, 2, 10)
            result["healthz"] = await measured_closed(health, pids, args.requests,
                                                      args.in_flight, args.limit_s)
        result.update(await route_suite(pool, ports, pids, args, 0))
        if reports:
            result.update(await report_suite(pool, ports[0], pids, gpus, args))
        return result
    finally:
        pool.close()
        stop_setup(setup)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    plans = {"memory": ("memory", False, 1, True), "redis": ("redis", True, 1, True),
             "replicas": ("redis, 2 replicas", True, 2, False)}
    with tempfile.TemporaryDirectory() as directory:
        fabric, gpus = _fabric_file(directory)
        redis = start_redis()
        runs = []
        try:
            for db, key in enumerate(args.setups.split(",")):
                name, shared, replicas, reports = plans[key]
                runs.append(await run_setup(name, fabric, gpus, args,
                                            redis if shared else None, replicas, db, reports))
        except BaseException:
            for log in Path(directory).glob("server-*.log"):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            redis.stop()
    return {"runs": runs}


# -- report ------------------------------------------------------------------------------------

def _cpu(run: dict[str, Any]) -> str:
    cpu = run["cpu_ms_per_request"]
    servers = sum(v for k, v in cpu.items() if k.startswith("server"))
    extra = f" + redis {cpu['redis']:.2f}" if "redis" in cpu else ""
    return f"{servers:.2f}{extra} (client {cpu['client']:.2f})"


def _closed_row(label: str, run: dict[str, Any]) -> str:
    return (f"| {label} | {run['requests']} | {run['rps']:.0f} | {run['p50_ms']:.2f} | "
            f"{run['p99_ms']:.2f} | {run['max_ms']:.2f} | {_cpu(run)} | {run['errors']} |")


def _open_row(label: str, run: dict[str, Any]) -> str:
    sent = f"{run['requests']}/{run['planned']}" + (" (saturated)" if run["saturated"] else "")
    return (f"| {label} at {run['rate']:.0f}/s | {sent} | {run['achieved_rps']:.0f} | "
            f"{run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['max_ms']:.2f} | "
            f"{run['errors']} |")


def _tables(result: dict[str, Any], lanes: int) -> tuple[str, str, str]:
    closed, opened, reports = [], [], []
    for run in result["runs"]:
        name = run["setup"]
        if "healthz" in run:
            closed.append(_closed_row(f"baseline `GET /healthz`, {name}", run["healthz"]))
        closed.append(_closed_row(f"`POST /v1/route`, {name}", run["closed"]))
        opened += [_open_row(f"{name}", o) for o in run["open"]]
        if "reports" in run:
            reports.append(_closed_row(f"`POST /v1/transfers` (submit), {name}", run["submit"]))
            reports.append(_closed_row(f"`POST …/report`, {name}", run["reports"]))
    return "\n".join(closed), "\n".join(opened), "\n".join(reports)


def _verdicts(result: dict[str, Any]) -> list[str]:
    """The issue's targets (stated for one process in memory), checked for every setup."""
    return [line for run in result["runs"] for line in _setup_verdicts(run)]


def _setup_verdicts(run: dict[str, Any]) -> list[str]:
    name, rps = run["setup"], run["closed"]["rps"]
    lines = [f"≥ 1,000 route req/s, {name}: **{'met' if rps >= 1000 else 'missed'}** "
             f"({rps:.0f} req/s with {run['closed']['in_flight']} in flight)"]
    at_500 = next((o for o in run["open"] if o["rate"] >= 500), None)
    if at_500 is None:
        return [*lines, f"p99 ≤ 10 ms at 500 req/s, {name}: **not run**"]
    met = at_500["p99_ms"] <= 10 and not at_500["saturated"] and not at_500["errors"]
    state = ", saturated" if at_500["saturated"] else ""
    return [*lines, f"p99 ≤ 10 ms at 500 req/s, {name}: **{'met' if met else 'missed'}** "
                    f"(p99 {at_500['p99_ms']:.2f} ms{state})"]


def _report(result: dict[str, Any], args: argparse.Namespace) -> str:
    closed, opened, reports = _tables(result, args.in_flight)
    verdicts = "\n".join(f"* {line}" for line in _verdicts(result))
    command = (f"bench/route_http_bench.py --requests {args.requests} --in-flight "
               f"{args.in_flight} --rates {args.rates} --open-s {args.open_s} "
               f"--transfers {args.transfers}")
    return f"""# Route and transfer reports over HTTP

`{command}` on {result['machine']}; load average before {result['load_before']},
after {result['load_after']} ({result['seconds']:.0f} s in all). Replicas are
`toposched serve` processes (uvicorn, h11 HTTP parser: neither uvloop nor httptools is
installed) with a 512-GPU synthetic fabric and {WORKERS} registered workers (128 prefill
+ 128 decode, no sidecars, so plans queue up); Redis is a private redis-server. The
load generator is a minimal keep-alive HTTP/1.1 client in this process, on the same
two cores as the servers.

## Closed loop, {args.in_flight} requests in flight

CPU is milliseconds of CPU time per request (`/proc/PID/stat` utime + stime over
the run): all replicas together, then redis-server, then the load generator.

| run | requests | req/s | p50 ms | p99 ms | max ms | CPU ms/request | errors |
| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |
{closed}

## Open loop (latency from each request's scheduled send time)

A run stops sending once a request is more than {args.saturated_s:g} s late
("saturated": the server does not keep up, and latency is queueing delay). The
req/s of a saturated run is what completed over a short burst and its drain, not
a sustained rate; with many requests in flight the Redis setups overlap their round
trips and complete more per second than the closed loop with {args.in_flight} in flight.

| run | sent/planned | req/s | p50 ms | p99 ms | max ms | errors |
| --- | --- | ---: | ---: | ---: | ---: | ---: |
{opened}

## Transfer reports

Plans of one block between two registered workers (`POST /v1/transfers`), then
both sides' reports (`POST /v1/transfers/{{id}}/report`: the initiator's marks the
transfer done and records it in telemetry), {args.in_flight} in flight.

| run | requests | req/s | p50 ms | p99 ms | max ms | CPU ms/request | errors |
| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |
{reports}

## Targets

{verdicts}

For scale: a single llm-d endpoint picker handles roughly 320–500 req/s, and
Dynamo's frontend spends about 6.5 ms of CPU per request; compare the CPU column.

## What one route request does

Parse and validate the body; list the 256 registrations from the store; build the
snapshot (Worker objects and locality arrays reused while unchanged); run the default
policy over the prefill × decode pairs; take the prefix blocks on the prefill side;
build, validate and queue the NIXL transfer plan for both sidecars; serialise the
explained decision. With Redis, listing is one sorted-set read plus one Lua script
over the workers' hashes, and the allocations, plan record and jobs are Redis writes.
{NOTES}"""


def main() -> None:
    """Run the benchmark and write its reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000,
                        help="closed-loop requests per setup")
    parser.add_argument("--in-flight", type=int, default=4,
                        help="requests in flight in closed-loop runs")
    parser.add_argument("--rates", default="200,500",
                        help="open-loop rates in requests/s, comma-separated")
    parser.add_argument("--open-s", type=float, default=4.0, help="seconds per open-loop run")
    parser.add_argument("--saturated-s", type=float, default=1.0)
    parser.add_argument("--transfers", type=int, default=1500,
                        help="plans submitted (each gets two reports)")
    parser.add_argument("--setups", default="memory,redis,replicas",
                        help="comma-separated, of memory, redis, replicas (two on Redis)")
    parser.add_argument("--limit-s", type=float, default=15.0,
                        help="a closed-loop run stops after this many seconds")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the .md from the .json of the last run")
    args = parser.parse_args()
    if args.render:
        result = json.loads((RESULTS / "route_http.json").read_text())
        (RESULTS / "route_http.md").write_text(_report(result, argparse.Namespace(
            **result["args"])))
        return
    started = time.perf_counter()
    load_before = load_average()
    result = asyncio.run(_run(args))
    result.update(load_before=load_before, load_after=load_average(),
                  seconds=time.perf_counter() - started, args=vars(args),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores, Python "
                          f"{platform.python_version()}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "route_http.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "route_http.md").write_text(_report(result, args))
    print(_report(result, args))


if __name__ == "__main__":
    main()
