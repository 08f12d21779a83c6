"""Routing at scale: the first route after the worker set changes, loop stalls, memory.

One run starts its own ``toposched serve`` processes on loopback ports (in memory, no
sidecars, leases of an hour) and, for each worker count, registers that many workers
over HTTP (alternately prefill and decode, one GPU each of a synthetic fabric of up to
10,240 GPUs; past that, workers share GPUs), then changes the worker set again and
again — a worker joins, the next time it leaves — and after each change sends one
``POST /v1/route``: its latency (client wall clock) is the *first route after a
change*; three more routes give the steady latency. All the while a separate
connection sends ``GET /healthz`` every 5 ms: the longest answer is the longest the
server's event loop stalled (plus one request's own cost). The server's resident memory
is read from ``/proc`` after the workers registered.

With ``--anchor DIR`` (a checkout of the code to compare with, e.g. the main branch
before this change) the same sizes up to ``--anchor-max`` workers run on both, anchor
and candidate alternately, on identical work; their decisions must agree (checked).

    .venv/bin/python bench/router_scale_bench.py                 # 1k-10k and 100k workers
    .venv/bin/python bench/router_scale_bench.py --anchor ../main --sizes 1000,2000

Writes bench/results/router_scale.{md,json}. Wall-clock figures on a shared 2-core
machine swing with other jobs: the report records the load average of every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from route_http_bench import Connection, Pool, cpu_seconds, encode  # noqa: E402

from bench import harness  # noqa: E402
from tests.servers import free_port, stop_process  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODEL = "llama-3-70b"
MAX_GPUS = 10_240
PROBE_INTERVAL_S = 0.005
TARGET_FIRST_ROUTE_MS, TARGET_STALL_MS = 50.0, 20.0


@dataclass
class Run:
    """One server (``code`` checkout) with ``workers`` registered, and what it showed."""

    code: str
    workers: int
    gpus: int
    register_s: float = 0.0
    rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    cold_route_ms: float = 0.0
    first_ms: list[float] = field(default_factory=list)
    first_cpu_ms: list[float] = field(default_factory=list)
    first_loop_ms: list[float] = field(default_factory=list)
    steady_ms: list[float] = field(default_factory=list)
    steady_loop_ms: list[float] = field(default_factory=list)
    probe_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    decisions: list[tuple[str, str]] = field(default_factory=list)
    load: str = ""


# -- processes ---------------------------------------------------------------------------------

def fabric_file(directory: Path, gpus: int) -> tuple[Path, list[str]]:
    """A rail-optimised synthetic fabric of about ``gpus`` GPUs (8 per host)."""
    from topology.synth import SynthParams, synth_cluster

    hosts_per_rack = max(1, -(-gpus // (8 * 2 * 4 * 4)))
    spec = synth_cluster(SynthParams(zones=2, pods_per_zone=4, racks_per_pod=4,
                                     hosts_per_rack=hosts_per_rack))
    path = directory / f"fabric-{gpus}.json"
    if not path.exists():
        spec.save(path)
    return path, spec.gpu_names()


@contextmanager
def server(code: Path, fabric: Path, log: Path) -> Iterator[tuple[int, int]]:
    """``toposched serve`` from the checkout ``code``; yields (port, pid)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(code), "TOPOSCHED_LEASE_TTL_S": "3600"}
    for variable in ("TOPOSCHED_WORKER_TOKEN", "TOPOSCHED_OPERATOR_TOKEN"):
        env.pop(variable, None)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "api.cli.main", "serve", "--port",
                                    str(port), "--fabric", str(fabric)], cwd=code, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        yield port, process.pid
    finally:
        stop_process(process)


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process (MB)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def loop_cpu_s(pid: int) -> float:
    """CPU seconds of the server's main thread, which runs its event loop (nanosecond
    resolution, from the scheduler's own accounting)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the workload ------------------------------------------------------------------------------

def registration(name: str, role: str, gpu: str) -> dict[str, Any]:
    """A worker with fake NIXL metadata (no sidecar runs)."""
    return {"name": name, "agent_name": name, "agent_metadata_b64": "bWQ=", "mem_type": "DRAM",
            "role": role, "model": MODEL, "host": "bench", "gpus": [gpu],
            "layout": {"num_blocks": 4096, "regions": [
                {"name": "kv", "base_addr": 0x7F00_0000_0000, "block_bytes": 65536}]}}


def route_request(i: int) -> bytes:
    """A 40-block prompt (640 tokens at 16 per block: too long to prefill locally)."""
    base = (i % 32) * 1000
    hashes = [base + k for k in range(1, 36)] + [10_000_000 + i * 10 + k for k in range(5)]
    return encode("POST", "/v1/route", {"block_hashes": hashes, "model": MODEL,
                                        "request_id": f"r{i}"})


async def wait_ready(port: int, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            conn = await Connection.open(port)
            try:
                if (await conn.call(encode("GET", "/readyz")))[0] == 200:
                    return
            finally:
                conn.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"server on port {port} did not become ready in {limit_s:.0f} s")


async def register_all(pool: Pool, port: int, workers: int, gpus: list[str],
                       lanes: int = 8) -> None:
    """Register ``workers`` workers over ``lanes`` connections."""
    numbers = iter(range(workers))

    async def lane() -> None:
        for i in numbers:
            role = "prefill" if i % 2 == 0 else "decode"
            await pool.expect(port, encode("POST", "/v1/workers", registration(
                f"w{i:06d}", role, gpus[i % len(gpus)])), 201)
    await asyncio.gather(*(lane() for _ in range(lanes)))


async def probe(port: int, into: list[float], stop: asyncio.Event) -> None:
    """``GET /healthz`` every few milliseconds on its own connection; latencies (ms)."""
    conn = await Connection.open(port)
    request = encode("GET", "/healthz")
    try:
        while not stop.is_set():
            started = time.perf_counter()
            await conn.call(request)
            into.append((time.perf_counter() - started) * 1e3)
            await asyncio.sleep(PROBE_INTERVAL_S)
    finally:
        conn.close()


async def change(pool: Pool, port: int, k: int, gpus: list[str]) -> None:
    """Change the worker set: worker ``join-k`` joins (k even) or ``join-(k-1)`` leaves."""
    if k % 2 == 0:
        await pool.expect(port, encode("POST", "/v1/workers", registration(
            f"join-{k:04d}", "decode", gpus[(7 * k) % len(gpus)])), 201)
    else:
        await delete(port, f"/v1/workers/join-{k - 1:04d}")


async def delete(port: int, path: str) -> None:
    """``DELETE path``, which must answer 204 (no body, so not through :class:`Pool`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode("DELETE", path))
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 204:
            raise RuntimeError(f"DELETE {path}: {status}")
    finally:
        writer.close()


async def timed_route(pool: Pool, port: int, i: int, run: Run) -> float:
    started = time.perf_counter()
    status, body = await pool.call(port, route_request(i))
    elapsed = (time.perf_counter() - started) * 1e3
    if status != 200:
        run.errors.append(f"route {i}: {status} {body[:200]!r}")
    else:
        decision = json.loads(body)["decision"]
        run.decisions.append((decision["prefill"]["worker"], decision["decode"]["worker"]))
    return elapsed


async def measure(run: Run, port: int, pid: int, gpus: list[str], changes: int) -> None:
    """Register, warm up, then the changes with their first routes under the probe."""
    pool = Pool()
    try:
        started = time.perf_counter()
        await register_all(pool, port, run.workers, gpus)
        run.register_s = time.perf_counter() - started
        run.cold_route_ms = await timed_route(pool, port, 0, run)
        for i in range(1, 4):
            await timed_route(pool, port, i, run)
        run.rss_mb, run.peak_rss_mb = memory_mb(pid)
        stop = asyncio.Event()
        prober = asyncio.create_task(probe(port, run.probe_ms, stop))
        await asyncio.sleep(0.2)
        for k in range(changes):
            await change(pool, port, k, gpus)
            cpu, loop = cpu_seconds(pid), loop_cpu_s(pid)
            run.first_ms.append(await timed_route(pool, port, 10 + 10 * k, run))
            run.first_cpu_ms.append((cpu_seconds(pid) - cpu) * 1e3)
            run.first_loop_ms.append((loop_cpu_s(pid) - loop) * 1e3)
            for j in range(1, 4):
                loop = loop_cpu_s(pid)
                run.steady_ms.append(await timed_route(pool, port, 10 + 10 * k + j, run))
                run.steady_loop_ms.append((loop_cpu_s(pid) - loop) * 1e3)
        stop.set()
        await prober
    finally:
        pool.close()


def one_run(code: Path, workers: int, work: Path, changes: int, ready_s: float) -> Run:
    gpus_wanted = min(workers, MAX_GPUS)
    fabric, gpus = fabric_file(work, gpus_wanted)
    run = Run(code=str(code), workers=workers, gpus=len(gpus), load=load_average())
    with server(code, fabric, work / f"server-{workers}-{code.name}.log") as (port, pid):
        asyncio.run(wait_ready(port, ready_s))
        asyncio.run(measure(run, port, pid, gpus, changes))
    run.load += f" → {load_average()}"
    return run


# -- per-decision cost: the previous n x n pair table against fabric rows, in process --------

class DensePairTable:
    """The anchor: the pair table as it was before this change — tier, latency, bandwidth
    and lanes of every worker pair precomputed in n x n arrays — behind the interface the
    cost model uses now (so only the table differs between the two routers)."""

    def __init__(self, distance: Any, workers: Any) -> None:
        from scheduler.router.cost import FabricRows

        self.rows = FabricRows(distance)  # only for the shared-link memo
        self.gpu = np.array([distance.index(w.gpus[0]) for w in workers], dtype=np.int64)
        count = np.array([len(w.gpus) for w in workers], dtype=np.int64)
        self.lanes = np.minimum.outer(count, count).astype(np.float64)
        n = len(workers)
        self.tier = np.empty((n, n), dtype=np.int64)
        self.latency_s, self.bandwidth = np.empty((n, n)), np.empty((n, n))
        for i in range(n):
            tiers, lat_us, bw, _ = distance.costs_from(int(self.gpu[i]), self.gpu)
            self.tier[i], self.latency_s[i], self.bandwidth[i] = tiers, lat_us * 1e-6, bw

    def scale(self, factors: Any) -> None:
        assert factors is None, "the anchor runs uncalibrated"

    def figures(self, prefill: Any, decode: Any) -> tuple[Any, Any, Any, Any]:
        flat = prefill[:, None] * len(self.gpu) + decode
        return (self.tier.take(flat), self.latency_s.take(flat), self.bandwidth.take(flat),
                self.lanes.take(flat))

    def pair(self, p: int, d: int) -> tuple[int, float, float, int]:
        return (int(self.tier[p, d]), float(self.latency_s[p, d]),
                float(self.bandwidth[p, d]), int(self.lanes[p, d]))

    def links(self, p: int, d: int) -> tuple[str, ...]:
        return self.rows.links(int(self.gpu[p]), int(self.gpu[d]))

    def link_figures(self, p: int, d: int) -> tuple[tuple[str, float, bool], ...]:
        return self.rows.link_figures(int(self.gpu[p]), int(self.gpu[d]))


def decision_ab(workers: int, decisions: int, rounds: int = 10) -> dict[str, Any]:
    """CPU time per ``Router.route`` with the anchor and the candidate pair table,
    alternating in rounds over the same requests; their decisions must agree."""
    import random

    from router_bench import big_fabric, fill_index, requests, spread_workers

    from policies.profile import resolve_policy
    from policies.registry import default_registry
    from scheduler.router.cost import FabricCostModel
    from scheduler.router.router import Router
    from scheduler.router.snapshot import build_snapshot

    rng = random.Random(1)
    distance = big_fabric()
    ws = spread_workers(distance, workers, rng)
    snap = build_snapshot(distance, ws, block_tokens=512)
    index = fill_index(ws, 4000, rng)
    reqs = requests(decisions, 4000, rng)
    policy = resolve_policy("fabric-cost", default_registry())
    dense = FabricCostModel(DensePairTable(distance, ws))  # type: ignore[arg-type]

    class Anchor(Router):
        def cost_model(self, snapshot: Any) -> FabricCostModel:
            return dense

    routers = {"anchor": Anchor(distance, policy, index=index),
               "candidate": Router(distance, policy, index=index)}
    cpu: dict[str, list[float]] = {name: [] for name in routers}
    chosen: dict[str, list[str]] = {name: [] for name in routers}
    for router in routers.values():  # warm-up: tables, rows, memo
        for req in reqs[:50]:
            router.route(req, snap)
    per_round = max(1, len(reqs) // rounds)
    for r in range(rounds):
        order = list(routers) if r % 2 == 0 else list(reversed(routers))
        for name in order:
            for req in reqs[r * per_round:(r + 1) * per_round]:
                started = time.thread_time()
                result = routers[name].route(req, snap)
                cpu[name].append((time.thread_time() - started) * 1e6)
                chosen[name].append(result.model_dump_json(exclude={"decision_us"}))
    same = chosen["anchor"] == chosen["candidate"]
    return {"workers": workers, "decisions": len(cpu["candidate"]), "same_decisions": same,
            **{f"{name}_cpu_p50_us": round(_p(v, 50)) for name, v in cpu.items()},
            **{f"{name}_cpu_p99_us": round(_p(v, 99)) for name, v in cpu.items()}}


# -- report ------------------------------------------------------------------------------------

def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summary(run: Run, label: str) -> dict[str, Any]:
    return {"label": label, "workers": run.workers, "gpus": run.gpus,
            "register_s": round(run.register_s, 1), "rss_mb": round(run.rss_mb),
            "peak_rss_mb": round(run.peak_rss_mb), "cold_route_ms": round(run.cold_route_ms, 1),
            "first_route_p50_ms": round(_p(run.first_ms, 50), 1),
            "first_route_max_ms": round(max(run.first_ms, default=float("nan")), 1),
            "first_route_cpu_p50_ms": round(_p(run.first_cpu_ms, 50), 1),
            "first_route_loop_p50_ms": round(_p(run.first_loop_ms, 50), 1),
            "first_route_loop_max_ms": round(max(run.first_loop_ms, default=float("nan")), 1),
            "steady_route_p50_ms": round(_p(run.steady_ms, 50), 1),
            "steady_route_loop_p50_ms": round(_p(run.steady_loop_ms, 50), 1),
            "healthz_p99_ms": round(_p(run.probe_ms, 99), 1),
            "healthz_max_ms": round(max(run.probe_ms, default=float("nan")), 1),
            "healthz_over_target": sum(ms > TARGET_STALL_MS for ms in run.probe_ms),
            "probes": len(run.probe_ms), "errors": run.errors[:5], "load": run.load}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| code | workers (round) | GPUs | register s | RSS MB (peak) | first route after "
            "change: wall p50 / max ms | its event-loop CPU p50 / max ms | its process CPU p50 ms "
            "(10 ms ticks) | steady route: wall p50 ms, loop CPU p50 ms | /healthz p99 / max "
            "ms | /healthz over 20 ms | errors | load average |\n| --- | ---: | ---: | ---: | "
            "---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    lines = [head]
    for r in rows:
        rnd = f" ({r['round']})" if r.get("rounds", 1) > 1 else ""
        lines.append(f"| {r['label']} | {r['workers']:,}{rnd} | {r['gpus']:,} | "
                     f"{r['register_s']} | "
                     f"{r['rss_mb']:,} ({r['peak_rss_mb']:,}) | {r['first_route_p50_ms']} / "
                     f"{r['first_route_max_ms']} | {r['first_route_loop_p50_ms']} / "
                     f"{r['first_route_loop_max_ms']} | {r['first_route_cpu_p50_ms']} | "
                     f"{r['steady_route_p50_ms']}, {r['steady_route_loop_p50_ms']} | "
                     f"{r['healthz_p99_ms']} / {r['healthz_max_ms']} | "
                     f"{r.get('healthz_over_target', '?')} of {r['probes']} | "
                     f"{len(r['errors'])} | {r['load']} |")
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The targets of issue 11 item 2, met or not, from the candidate's rows."""
    out = []
    for r in rows:
        if r["label"] == "candidate" and r["workers"] == 10_000:
            out += _targets(r)
        if r["label"] == "candidate" and r["workers"] >= 100_000:
            out.append(f"{r['workers']:,} workers: {len(r['errors'])} errors over "
                       f"{r['probes']} probes and every route "
                       f"({'target met' if not r['errors'] else 'target NOT met'}: must not "
                       f"fail); longest /healthz answer {r['healthz_max_ms']} ms; event-loop "
                       f"CPU per route {r['steady_route_loop_p50_ms']} ms (steady p50), "
                       f"{r['first_route_loop_max_ms']} ms (first after a change, max).")
    tens = [r for r in rows if r["label"] == "candidate" and r["workers"] == 10_000]
    if len(tens) > 1:
        held = sum(r["healthz_max_ms"] <= TARGET_STALL_MS for r in tens)
        anchor = [a["healthz_max_ms"] for a in rows
                  if a["label"] == "anchor" and a["workers"] == 10_000]
        out.append(f"10,000 workers, {len(tens)} rounds in this run: the stall target held in "
                   f"{held} of {len(tens)} (longest /healthz answers "
                   f"{_listed(r['healthz_max_ms'] for r in tens)} ms; the anchor's: "
                   f"{_listed(anchor)} ms).")
    cand = [(r["workers"], r["rss_mb"]) for r in rows if r["label"] == "candidate"]
    if len(cand) >= 2:
        (n0, m0), (n1, m1) = cand[0], cand[-1]
        out.append(f"Memory: {m0:,} MB at {n0:,} workers, {m1:,} MB at {n1:,} "
                   f"({(m1 - m0) / max(n1 - n0, 1) * 1024:.1f} KiB per added worker).")
    return out


def _listed(values: Any) -> str:
    return ", ".join(map(str, values))


def _targets(r: dict[str, Any]) -> list[str]:
    first_ok = r["first_route_p50_ms"] <= TARGET_FIRST_ROUTE_MS
    at_max = " and the max" if r["first_route_max_ms"] <= TARGET_FIRST_ROUTE_MS else \
        ", not at the max"
    stall_ok = r["healthz_max_ms"] <= TARGET_STALL_MS
    name = f"10,000 workers (round {r['round']})" if r.get("rounds", 1) > 1 else "10,000 workers"
    return [
        f"{name}, first route after a change: p50 {r['first_route_p50_ms']} ms, max "
        f"{r['first_route_max_ms']} ms wall (target ≤ {TARGET_FIRST_ROUTE_MS:g} ms: "
        f"{'met at the p50' if first_ok else 'NOT met'}"
        f"{at_max}); "
        f"the event loop ran {r['first_route_loop_p50_ms']} / {r['first_route_loop_max_ms']} "
        "ms of CPU for it (p50 / max).",
        f"{name}, event-loop stalls: longest /healthz answer {r['healthz_max_ms']} ms, "
        f"p99 {r['healthz_p99_ms']} ms, {r.get('healthz_over_target', '?')} of {r['probes']} "
        f"answers over {TARGET_STALL_MS:g} ms (target: no stall over {TARGET_STALL_MS:g} ms: "
        f"{'met' if stall_ok else 'NOT met'}).",
    ]


def decision_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| workers | decisions | n x n table (anchor) CPU p50 / p99 µs | fabric rows "
             "(candidate) CPU p50 / p99 µs | same decisions |",
             "| ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['workers']:,} | {r['decisions']:,} | {r['anchor_cpu_p50_us']} / "
              f"{r['anchor_cpu_p99_us']} | {r['candidate_cpu_p50_us']} / "
              f"{r['candidate_cpu_p99_us']} | {'yes' if r['same_decisions'] else 'NO'} |"
              for r in rows]
    return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
    """The Markdown report of a run (``result``: what :func:`main` writes as JSON)."""
    rows, agreement = result["rows"], result["agreement"]
    decisions, args = result["decisions"], result["args"]
    anchor = (f" The anchor is {args['anchor_note'] or 'the code at --anchor'}; it runs "
              f"the sizes up to {args['anchor_max']:,} workers, alternately with the "
              "candidate (which goes first alternates too)." if args["anchor"] else "")
    return "\n".join([
        "# Routing at scale", "",
        *harness.header_markdown(result, "bench/router_scale_bench.py", compared=False),
        "Method: see the module docstring (first route after each of "
        f"{args['changes']} worker-set changes, /healthz probed every 5 ms meanwhile)."
        f"{anchor}", "",
        table(rows), "", *[f"- {v}" for v in verdicts(rows)], *_across(result),
        *[f"- {a}" for a in agreement], "",
        "Reading the columns: *first route after change* is the client's wall time of the "
        "`POST /v1/route` sent right after a worker joined or left (in the candidate: the "
        "names the in-memory stores journaled since the last route read by name, the "
        "worker spliced into the live snapshot and the router's pair table, pair figures "
        "of candidates without a fabric row computed for the decision's grid; in the "
        "anchor: the whole listing and loads read, the worker spliced in, cold fabric rows "
        "filled for new candidates); *its server "
        "CPU* is the server process's CPU time over that request; the /healthz columns are "
        "the answers of a probe running all through the changes, so their maximum bounds "
        "how long the event loop stalled (on a machine with idle cores; with other jobs "
        "it also counts the probe's own wait for a core). *Event-loop CPU* is the CPU time "
        "of the server's main thread (`/proc/PID/task/PID/schedstat`) over the request: "
        "what the loop itself spent on it, rebuilds run in a worker thread excluded; a "
        "stall cannot be shorter than the longest of its slices (both routes yield to the "
        "loop between their steps, so the loop CPU of one route is spread over several "
        "slices). Past 10,240 workers, "
        "workers share GPUs (the fabric stays at 10,240 GPUs): what grows is the worker "
        "count.", "",
        *other_runs_table(result.get("other_runs", [])),
        "## Per-decision cost (in process)", "",
        "One `Router.route` with the default policy over `bench/router_bench.py`'s setup "
        "(1,024-GPU fabric, one-GPU workers, documents of 64 chained blocks in the prefix "
        "index), CPU time per call: the previous pair table (tier, latency, bandwidth "
        "and lanes of all n² worker pairs precomputed, kept in this bench as the anchor) "
        "against fabric rows per source GPU, kept for sources asked a few times (6 on this "
        "fabric), the decision's grid computed for the others. Both routers take the "
        "same requests in alternating rounds; their decisions are compared in full.", "",
        decision_table(decisions), ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000",
                        help="worker counts, comma-separated")
    parser.add_argument("--big", type=int, default=100_000,
                        help="one more size, candidate only (0: skip)")
    parser.add_argument("--anchor", type=Path, default=None,
                        help="checkout of the code to compare with (same sizes, alternately)")
    parser.add_argument("--anchor-note", default="",
                        help="what the anchor is, for the report (e.g. 'main at 02b8979')")
    parser.add_argument("--anchor-max", type=int, default=2000,
                        help="largest size the anchor runs")
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of the --rounds-at size (each alternating with the anchor)")
    parser.add_argument("--rounds-at", type=int, default=10_000,
                        help="the size run --rounds times")
    parser.add_argument("--ready-s", type=float, default=600.0)
    parser.add_argument("--decisions", type=int, default=4000,
                        help="decisions per router in the per-decision comparison (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the .md from the .json of the last run")
    parser.add_argument("--also", type=Path, nargs="*", default=[],
                        help="reports (.json) of other runs of this bench, listed at 10,000 "
                             "workers next to this one (how much runs vary)")
    harness.add_arguments(parser, conditions=("awake",), timing=False)
    parser.set_defaults(repeats=1)  # one pass over the sizes; the changes are the samples
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((args.out / "router_scale.json").read_text())
    else:
        result = harness.wrap_main(args, "router-scale-bench", ["uvicorn", "fastapi"],
                                   lambda: _run(args), "bench/router_scale_bench.py", argv)
        result["command"] = shlex.join(["flock", str(harness.LOCK_PATH), ".venv/bin/python",
                                        "bench/router_scale_bench.py",
                                        *(sys.argv[1:] if argv is None else argv)])
        result["args"] = {k: str(v) if isinstance(v, Path) else v
                          for k, v in vars(args).items()}
        harness.write_json(args.out / "router_scale.json", result)
    if args.also:
        result["other_runs"] = [_other_run(json.loads(path.read_text())) for path in args.also]
        harness.write_json(args.out / "router_scale.json", result)
    text = report(result)
    (args.out / "router_scale.md").write_text(text)
    print(text)


def _across(result: dict[str, Any]) -> list[str]:
    """How the candidate's 10,000-worker stall figure fared in this and the other runs."""
    if not result.get("other_runs"):
        return []  # (this run's own rounds are summed up with the verdicts)
    rows = [r for run in [{"rows": result["rows"]}, *result["other_runs"]]
            for r in run["rows"] if r["label"] == "candidate" and r["workers"] == 10_000]
    met = sum(r["healthz_max_ms"] <= TARGET_STALL_MS for r in rows)
    return [f"- Across {len(rows)} runs of this bench (this one's and those under *Other "
            f"runs*), the stall target held at 10,000 workers in {met}: the longest /healthz "
            f"answers were {', '.join(str(r['healthz_max_ms']) for r in rows)} ms."]


def _other_run(data: dict[str, Any]) -> dict[str, Any]:
    """The 10,000-worker rows of another run's report, with when and how it ran."""
    env, cond = data.get("environment", {}), data.get("condition") or {}
    return {"date": env.get("date", "?"), "commit": env.get("commit", "?"),
            "condition": cond.get("name", "?"), "load": (cond.get("load_before") or [None])[0],
            "rows": [r for r in data["rows"] if r["workers"] == 10_000]}


def other_runs_table(runs: list[dict[str, Any]]) -> list[str]:
    """Other runs at 10,000 workers, one line per code and run."""
    if not runs:
        return []
    lines = ["## Other runs at 10,000 workers", "",
             "The same bench run earlier (the machine is shared: other jobs set the load).",
             "", "| run | commit | condition, 1-min load | code | first route p50 / max ms | "
             "/healthz max ms | /healthz over 20 ms |", "| --- | --- | --- | --- | ---: | ---: "
             "| ---: |"]
    for run in runs:
        load = f"{run['load']:.2f}" if run["load"] is not None else "?"
        lines += [f"| {run['date']} | `{run['commit']}` | {run['condition']}, {load} | "
                  f"{r['label']} | {r['first_route_p50_ms']} / {r['first_route_max_ms']} | "
                  f"{r['healthz_max_ms']} | {r.get('healthz_over_target', '?')} of "
                  f"{r['probes']} |" for r in run["rows"]]
    return [*lines, ""]


def _round(number: int, workers: int, args: argparse.Namespace) -> str:
    """", round N" for the size that runs several rounds, else nothing."""
    return f", round {number}" if workers == args.rounds_at and args.rounds > 1 else ""


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size on the candidate (and the anchor), then the per-decision comparison."""
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows, runs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plan = [(workers, r) for workers in sizes
                for r in range(args.rounds if workers == args.rounds_at else 1)]
        for workers, r in plan + ([(args.big, 0)] if args.big else []):
            codes = [("candidate", ROOT)]
            if args.anchor is not None and workers <= args.anchor_max and workers in sizes:
                codes = [*codes, ("anchor", args.anchor.resolve())]
                if len(runs) % 4:  # alternate which goes first
                    codes.reverse()
            for label, code in codes:
                print(f"{label}: {workers:,} workers (round {r + 1}) …", file=sys.stderr,
                      flush=True)
                run = one_run(code, workers, work, args.changes, args.ready_s)
                runs[(label, workers, r)] = run
                rows.append({**summary(run, label), "round": r + 1,
                             "rounds": args.rounds if workers == args.rounds_at else 1})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    agreement = []
    for (label, workers, r), run in runs.items():
        anchor = runs.get(("anchor", workers, r))
        if label == "candidate" and anchor is not None:
            same = anchor.decisions == run.decisions
            agreement.append(f"{workers:,} workers{_round(r + 1, workers, args)}: anchor and "
                             f"candidate made {'the same' if same else 'DIFFERENT'} "
                             f"{len(run.decisions)} decisions.")
    decisions = [decision_ab(n, args.decisions) for n in (256, 1024)] if args.decisions else []
    return {"rows": rows, "agreement": agreement, "decisions": decisions}


if __name__ == "__main__":
    main()
