"""Route requests over real HTTP: throughput (closed loop) and latency at a fixed rate.

One uvicorn process on a free loopback port serves the app with in-memory state, a
synthetic fabric and 256 registered workers (128 prefill, 128 decode, no sidecars:
plans queue up). One httpx client with keep-alive drives it from this process:

* baseline: ``GET /healthz`` closed loop (what the HTTP stack alone costs here);
* route closed loop: ``POST /v1/route`` back to back → requests per second;
* route open loop: requests sent at a fixed rate (default 500/s) on a schedule,
  latency measured from the scheduled send time (no coordinated omission).

Client and server share the machine's cores, so the ratio route/healthz is the
meaningful number on a shared machine. Writes bench/results/route_http.{md,json}.

    .venv/bin/python bench/route_http_bench.py --requests 3000 --rate 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVER = """
import sys, uvicorn
from api.app import create_app
from api.service import install_services
from api.settings import Settings
settings = Settings()
app = create_app(settings)
install_services(app, settings)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fabric_file(directory: str) -> tuple[Path, list[str]]:
    from topology.synth import SynthParams, synth_cluster
    spec = synth_cluster(SynthParams(zones=2, pods_per_zone=2, racks_per_pod=4,
                                     hosts_per_rack=4))  # 64 hosts, 512 GPUs
    path = Path(directory) / "fabric.json"
    spec.save(path)
    return path, spec.gpu_names()


def _registration(i: int, gpus: list[str]) -> dict[str, Any]:
    role = "prefill" if i % 2 == 0 else "decode"
    return {"name": f"w{i:03d}", "agent_name": f"w{i:03d}", "agent_metadata_b64": "bWQ=",
            "mem_type": "DRAM", "role": role, "model": "llama-3-70b", "host": "bench",
            "gpus": gpus, "layout": {"num_blocks": 4096, "regions": [
                {"name": "kv", "base_addr": 0x7F00_0000_0000, "block_bytes": 65536}]}}


def _start_server(port: int, fabric: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TOPOSCHED_FABRIC": str(fabric), "TOPOSCHED_LEASE_TTL_S": "3600",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port)], cwd=ROOT, env=env)


async def _wait_ready(client: httpx.AsyncClient, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("server did not become ready")


def _route_body(i: int) -> dict[str, Any]:
    base = (i % 64) * 1000  # 64 distinct prompt families, 4 blocks each
    return {"block_hashes": [base + 1, base + 2, base + 3, base + 4 + i % 7],
            "model": "llama-3-70b", "request_id": f"r{i}"}


async def _closed(client: httpx.AsyncClient, count: int, route: bool,
                  limit_s: float) -> dict[str, Any]:
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        answer = await (client.post("/v1/route", json=_route_body(i)) if route
                        else client.get("/healthz"))
        latencies.append(time.perf_counter() - t0)
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")
        if time.perf_counter() - started > limit_s:
            break
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "seconds": elapsed,
            "rps": len(latencies) / elapsed, **_percentiles(latencies)}


async def _open(client: httpx.AsyncClient, count: int, rate: float,
                offset: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        nonlocal errors
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        answer = await client.post("/v1/route", json=_route_body(offset + i))
        latencies.append(time.perf_counter() - scheduled)
        errors += answer.status_code != 200

    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    return {"requests": count, "rate": rate, "seconds": elapsed, "errors": errors,
            "achieved_rps": count / elapsed, **_percentiles(latencies)}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        fabric, gpus = _fabric_file(directory)
        port = _free_port()
        server = _start_server(port, fabric)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                         timeout=30) as client:
                await _wait_ready(client)
                for i in range(256):  # two GPUs per worker, 256 workers
                    reg = _registration(i, gpus[2 * i:2 * i + 2])
                    assert (await client.post("/v1/workers", json=reg)).status_code == 201
                await _closed(client, 200, True, 10)  # warm-up: pair table, caches
                return {
                    "healthz": await _closed(client, args.requests, False, args.limit_s),
                    "route": await _closed(client, args.requests, True, args.limit_s),
                    "route_open_loop": await _open(client, args.open_requests, args.rate,
                                                   args.requests)}
        finally:
            server.terminate()
            server.wait(timeout=10)


def _report(result: dict[str, Any], args: argparse.Namespace) -> str:
    h, r, o = result["healthz"], result["route"], result["route_open_loop"]
    verdict_rps = "met" if r["rps"] >= 1000 else "missed"
    verdict_p99 = "met" if o["p99_ms"] <= 10 else "missed"
    return f"""# Route over HTTP

`bench/route_http_bench.py --requests {args.requests} --open-requests {args.open_requests} \
--rate {args.rate}` on {result['machine']}. One uvicorn process (in-memory state, 512-GPU
synthetic fabric, 256 registered workers: 128 prefill + 128 decode, no sidecars, so
plans queue up) and one httpx keep-alive client in another process on the same cores.

| run | requests | req/s | p50 ms | p99 ms | max ms |
| --- | ---: | ---: | ---: | ---: | ---: |
| baseline `GET /healthz`, closed loop | {h['requests']} | {h['rps']:.0f} | {h['p50_ms']:.2f} \
| {h['p99_ms']:.2f} | {h['max_ms']:.2f} |
| `POST /v1/route`, closed loop | {r['requests']} | {r['rps']:.0f} | {r['p50_ms']:.2f} \
| {r['p99_ms']:.2f} | {r['max_ms']:.2f} |
| `POST /v1/route`, open loop at {o['rate']:.0f}/s | {o['requests']} | \
{o['achieved_rps']:.0f} | {o['p50_ms']:.2f} | {o['p99_ms']:.2f} | {o['max_ms']:.2f} |

Route/healthz throughput ratio: {r['rps'] / h['rps']:.2f}. Open-loop errors: {o['errors']}.
Open-loop latency is measured from each request's scheduled send time.

Targets: ≥ 1,000 route req/s — **{verdict_rps}**; p99 ≤ 10 ms at {o['rate']:.0f} req/s —
**{verdict_p99}**.

Each route request does: list the 256 registrations from the store, build the
snapshot (locality arrays cached), run the default policy over all prefill × decode
pairs, allocate the prefill-side blocks, build and queue the NIXL transfer plan for
both sidecars, and serialise the explained decision. Server and client share the
machine's cores (and, on the shared development machine, other engineers' jobs), so
the closed-loop figures are bounded by the healthz baseline of the same run.
"""


def main() -> None:
    """Run the benchmark and write its reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--open-requests", type=int, default=2500)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--limit-s", type=float, default=30.0)
    args = parser.parse_args()
    result = asyncio.run(_run(args))
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python " \
                        f"{platform.python_version()}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "route_http.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "route_http.md").write_text(_report(result, args))
    print(_report(result, args))


if __name__ == "__main__":
    main()
