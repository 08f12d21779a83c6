"""How fast a topology or placement change made through one replica is served by another.

One run starts its own processes on loopback ports: a private redis-server
(``tests/servers.py``) and, for each poll interval asked for (``--polls``, default the
default 0.5 s and 0.1 s, set through ``TOPOSCHED_SHARED_POLL_S``), two
``toposched serve --redis`` replicas, A and B, on a fresh key prefix. It measures:

1. Fabric convergence: A gets the captures and inventory of a small cluster
   (``--hosts`` HGX hosts, one per rack); then each round waits a random time
   (uniform over one poll interval, so the PUT lands at a random phase of B's poll),
   PUTs one host's LLDP capture to A with its first NIC moved to another rail leaf
   (and back, alternately), and polls B's ``GET /v1/topology/distance`` between that
   host's GPU 0 and another host's every ``--probe-ms`` until B's tier changes. The
   lag is counted from A's answer to the first changed answer of B (wall clock), so it
   includes up to one probe interval and one probe request.
2. Placement convergence: a placement solved once on A, then applied again on A
   (``PUT /v1/placement``) each round at a random phase; B's ``GET /v1/placement`` is
   polled until it serves the ``applied_at`` that A answered.
3. Idle CPU: after the rounds, ``--idle-s`` seconds with no requests; each replica's and
   redis-server's CPU time (``/proc/PID/stat`` utime + stime, 10 ms ticks) over that
   window, as a share of one core. This is everything an idle replica does (the
   follow loop, the lease-expiry loop, the KV-event replication long-poll), not the
   follow loop alone.

and, in this process, the CPU cost of following, at ``--big-hosts`` hosts (128 by
default; synthetic HGX H100 cluster, captures posted as feeds), on the same Redis:
``ServiceState.refresh()`` when nothing changed (``time.process_time`` per call, and
redis-server's CPU per call from ``/proc``), the cold start of a replica
(``ServiceState.start()``: read the topology document, parse every capture, build the
distance model), a one-capture edit on the writer (``update_feeds``: parse, rebuild,
write) and the follower's ``refresh()`` that adopts it (parse the changed capture,
build the distance model).

Wall-clock figures on a shared 2-core machine are loose (the client, both replicas and
Redis share the cores); the report gives the load average before and after.
Writes bench/results/replica_convergence.{md,json}.

    .venv/bin/python bench/replica_convergence_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.feeds import FeedKind, Feeds, parse_capture, parse_inventory  # noqa: E402
from api.service import ServiceState  # noqa: E402
from bench import harness  # noqa: E402
from policies.profile import resolve_policy  # noqa: E402
from policies.registry import default_registry  # noqa: E402
from scheduler.capacity import Workload  # noqa: E402
from scheduler.prefix import PrefixIndex  # noqa: E402
from scheduler.state.redis_docs import RedisDocs  # noqa: E402
from tests.api.service_builders import cluster, inventory_yaml  # noqa: E402
from tests.servers import RedisServer, free_port, start_redis, stop_process  # noqa: E402
from topology.spec import FabricSpec, HostSpec  # noqa: E402
from topology.synth import SynthParams, synth_cluster  # noqa: E402
from topology.writers import lldp_json0, nvsmi_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
T = TypeVar("T")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Longest wait for one change to show on B before the run is declared broken.
CONVERGE_LIMIT_S = 30.0


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[convergence-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
          flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / max (and n) of wall-clock samples, in milliseconds."""
    ms = np.array(samples_s) * 1e3
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p90_ms": round(float(np.percentile(ms, 90)), 1), "max_ms": round(float(ms.max()), 1)}


# -- the cluster -----------------------------------------------------------------------

def big_cluster(hosts: int) -> FabricSpec:
    """``hosts`` HGX H100 hosts, 4 per rack, 8 racks per pod (one zone)."""
    pods = max(1, hosts // 32)
    return synth_cluster(SynthParams(zones=1, pods_per_zone=pods, racks_per_pod=8,
                                     hosts_per_rack=max(1, hosts // (8 * pods))))


def moved_lldp(host: HostSpec) -> str:
    """``host``'s LLDP capture with its first NIC moved to the next rail leaf, on a port
    of its own (the next leaf's port for this host is the second NIC's: two NICs on one
    switch port are refused as mis-cabling)."""
    leaf = host.nics[0].leaf
    if leaf is None or not leaf.endswith("rail0"):  # the synthetic layout is assumed
        raise ValueError(f"{host.name}: first NIC on leaf {leaf!r}, not a rail-0 leaf")
    return (lldp_json0(host).replace(f'"{leaf}"', f'"{leaf[:-1]}1"')
            .replace('"value": "Ethernet', '"value": "Ethernet9', 1))


def placement_target() -> dict[str, Any]:
    """2 prefill + 2 decode TP-4 instances of Llama-3-70B chat, 2 s solver limit."""
    workload = Workload(model="llama-3-70b", rate_rps=5.0, input_tokens_mean=4000.0,
                        output_tokens_mean=300.0, ttft_slo_ms=2000.0, tpot_slo_ms=50.0)
    return {"workload": workload.model_dump(mode="json"), "tp_prefill": 4, "tp_decode": 4,
            "prefill": 2, "decode": 2, "time_limit_s": 2.0}


# -- replica processes -------------------------------------------------------------------

@dataclass
class Replica:
    """A running ``toposched serve --redis`` process and a keep-alive client to it."""

    process: subprocess.Popen[bytes]
    client: httpx.Client

    def stop(self) -> None:
        """Close the client; stop the process (SIGTERM, then SIGKILL)."""
        self.client.close()
        stop_process(self.process)


def start_replica(redis_url: str, prefix: str, poll_s: float, logs: Path) -> Replica:
    """A replica on a free port (auth off); its log goes to ``logs``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOPOSCHED_")}
    env.update(PYTHONPATH=str(ROOT), TOPOSCHED_SHARED_POLL_S=str(poll_s),
               TOPOSCHED_REDIS_PREFIX=prefix)
    command = [sys.executable, "-m", "api.cli.main", "serve", "--port", str(port),
               "--redis", redis_url, "--log-level", "warning"]
    with (logs / f"replica-{port}.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    replica = Replica(process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))
    _wait_healthy(replica)
    return replica


def _wait_healthy(replica: Replica, limit_s: float = 90.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise RuntimeError(f"replica exited with {replica.process.returncode}")
        try:
            if replica.client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("replica did not answer /healthz")


def expect(answer: httpx.Response, status: int = 200) -> Any:
    """The JSON body of an answer that must have ``status``."""
    if answer.status_code != status:
        raise RuntimeError(f"{answer.request.url}: {answer.status_code} {answer.text[:300]}")
    return answer.json()


def wait_until(probe: Callable[[], bool], probe_s: float) -> float:
    """Call ``probe`` every ``probe_s`` until it is true; the perf_counter time it was."""
    deadline = time.monotonic() + CONVERGE_LIMIT_S
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no convergence within {CONVERGE_LIMIT_S} s")
        time.sleep(probe_s)
    return time.perf_counter()


def answers(read: Callable[[], T], wanted: Callable[[T], bool]) -> Callable[[], bool]:
    """A probe: does ``read()`` answer what is ``wanted`` now?"""
    return lambda: wanted(read())


# -- 1, 2: convergence rounds ------------------------------------------------------------------

def load_topology(a: Replica, b: Replica, spec: FabricSpec, probe_s: float) -> None:
    """Post every capture and the inventory to A; wait until B serves a fabric."""
    for host in spec.hosts:
        expect(a.client.put(f"/v1/topology/hosts/{host.name}/nvidia-smi",
                            content=nvsmi_text(host)))
        expect(a.client.put(f"/v1/topology/hosts/{host.name}/lldp", content=lldp_json0(host)))
    expect(a.client.put("/v1/topology/inventory", content=inventory_yaml(spec)))
    wait_until(lambda: b.client.get("/v1/topology/fabric").status_code == 200, probe_s)


def fabric_rounds(a: Replica, b: Replica, spec: FabricSpec, rounds: int, poll_s: float,
                  probe_s: float) -> dict[str, Any]:
    """Move one NIC through A, back and forth; how long until B's distance tier flips."""
    moving, other = spec.hosts[1], spec.hosts[0]
    pair = {"a": f"{other.name}/gpu0", "b": f"{moving.name}/gpu0"}
    texts = [moved_lldp(moving), lldp_json0(moving)]

    def tier() -> str:
        found: str = expect(b.client.get("/v1/topology/distance", params=pair))["tier"]
        return found

    puts, lags = [], []
    for i in range(rounds):
        time.sleep(random.uniform(0, poll_s))  # a random phase against B's poll
        before = tier()
        sent = time.perf_counter()
        answer = expect(a.client.put(f"/v1/topology/hosts/{moving.name}/lldp",
                                     content=texts[i % 2]))
        answered = time.perf_counter()
        if not answer["change"]["changed"]:
            raise RuntimeError(f"round {i}: the edit changed nothing on A: {answer}")
        lags.append(wait_until(answers(tier, partial(operator.ne, before)), probe_s) - answered)
        puts.append(answered - sent)
    return {"put_on_a": summary_ms(puts), "b_serves_it": summary_ms(lags)}


def solve_on(a: Replica, target: dict[str, Any], probe_s: float) -> dict[str, Any]:
    """Solve a placement on A; the placement it found."""
    job_id = expect(a.client.post("/v1/placement/solve", json=target), 202)["job"]["id"]
    done: dict[str, Any] = {}

    def finished() -> bool:
        done.update(expect(a.client.get(f"/v1/placement/jobs/{job_id}")))
        return done["status"] in ("done", "failed")
    wait_until(finished, probe_s)
    if done["status"] != "done":
        raise RuntimeError(f"placement solve failed: {done}")
    placement: dict[str, Any] = done["result"]
    return placement


def placement_rounds(a: Replica, b: Replica, rounds: int, poll_s: float,
                     probe_s: float) -> dict[str, Any]:
    """Apply a placement on A each round; how long until B serves that placement."""
    target = placement_target()
    body = {"placement": solve_on(a, target, probe_s), "target": target}

    def applied_at_b() -> float | None:
        answer = b.client.get("/v1/placement")
        return None if answer.status_code == 404 else float(expect(answer)["applied_at"])

    puts, lags = [], []
    for _ in range(rounds):
        time.sleep(random.uniform(0, poll_s))
        sent = time.perf_counter()
        applied = float(expect(a.client.put("/v1/placement", json=body))["applied_at"])
        answered = time.perf_counter()
        served = wait_until(answers(applied_at_b, partial(operator.eq, applied)), probe_s)
        lags.append(served - answered)
        puts.append(answered - sent)
    return {"put_on_a": summary_ms(puts), "b_serves_it": summary_ms(lags)}


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU over ``seconds`` of no requests, in % of one core."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    time.sleep(seconds)
    elapsed = time.perf_counter() - started
    return {name: round((cpu_seconds(pid) - before[name]) / elapsed * 100, 2)
            for name, pid in pids.items()}


def run_poll(redis: RedisServer, poll_s: float, index: int, args: argparse.Namespace,
             logs: Path) -> dict[str, Any]:
    """Two fresh replicas at one poll interval: fabric and placement rounds, idle CPU."""
    progress(f"poll {poll_s} s: starting replicas A and B")
    prefix = f"conv{index}:"
    a = start_replica(redis.url, prefix, poll_s, logs)
    try:
        b = start_replica(redis.url, prefix, poll_s, logs)
    except BaseException:
        a.stop()
        raise
    probe_s = args.probe_ms / 1e3
    try:
        load_topology(a, b, cluster(args.hosts), probe_s)
        progress(f"poll {poll_s} s: {args.rounds} fabric rounds")
        result: dict[str, Any] = {"poll_s": poll_s, "fabric": fabric_rounds(
            a, b, cluster(args.hosts), args.rounds, poll_s, probe_s)}
        progress(f"poll {poll_s} s: placement solve and {args.rounds} placement rounds")
        result["placement"] = placement_rounds(a, b, args.rounds, poll_s, probe_s)
        progress(f"poll {poll_s} s: {args.idle_s:g} s idle")
        result["idle_cpu_pct_of_core"] = idle_cpu(
            {"replica_a": a.process.pid, "replica_b": b.process.pid,
             "redis": redis.process.pid}, args.idle_s)
        return result
    finally:
        a.stop()
        b.stop()


# -- 3: the CPU cost of following, in process ------------------------------------------------------

def full_feeds(spec: FabricSpec) -> Feeds:
    """Every host's nvidia-smi and LLDP capture and the inventory, parsed."""
    feeds = Feeds()
    for host in spec.hosts:
        texts: tuple[tuple[FeedKind, str], ...] = (("nvsmi", nvsmi_text(host)),
                                                   ("lldp", lldp_json0(host)))
        for kind, text in texts:
            feeds = feeds.with_capture(host.name, kind, parse_capture(kind, text, host.name))
    text = inventory_yaml(spec)
    return feeds.with_inventory(parse_inventory(text, "inventory"), text)


def service(url: str, prefix: str) -> ServiceState:
    """A replica's service state on the Redis documents under ``prefix``."""
    return ServiceState(resolve_policy(None, default_registry()), PrefixIndex(),
                        docs=RedisDocs(url, prefix=prefix))


async def cpu_of(work: Callable[[], Any]) -> float:
    """CPU seconds of this process (all threads) while ``await work()`` runs."""
    started = time.process_time()
    await work()
    return time.process_time() - started


async def close(state: ServiceState) -> None:
    """Close the state's Redis connection pool."""
    if isinstance(state.docs, RedisDocs):
        await state.docs.aclose()


async def follow_costs(redis: RedisServer, args: argparse.Namespace) -> dict[str, Any]:
    """Writer load, cold starts, one-capture edits followed, idle refreshes; CPU ms."""
    spec = big_cluster(args.big_hosts)
    prefix = "follow:"
    writer = service(redis.url, prefix)
    await writer.start()
    load_s = await cpu_of(lambda: writer.update_feeds(lambda _: full_feeds(spec)))
    starts = []
    for _ in range(args.repeats):
        fresh = service(redis.url, prefix)
        starts.append(await cpu_of(fresh.start))
        await close(fresh)
    follower = service(redis.url, prefix)
    await follower.start()
    edits, follows = await _edits_followed(writer, follower, spec.hosts[1], args.repeats)
    idle = await _idle_refreshes(follower, redis.process.pid, args.refresh_calls)
    await close(follower)
    await close(writer)
    return {"hosts": len(spec.hosts), "gpus": len(spec.gpu_names()),
            "writer_builds_from_all_feeds_ms": round(load_s * 1e3, 1),
            "cold_start_ms": _cpu_summary(starts), "writer_edit_one_capture_ms":
            _cpu_summary(edits), "follower_adopts_edit_ms": _cpu_summary(follows), **idle}


async def _edits_followed(writer: ServiceState, follower: ServiceState, host: HostSpec,
                          repeats: int) -> tuple[list[float], list[float]]:
    """CPU of each one-capture edit on the writer and of the follower adopting it."""
    texts = [moved_lldp(host), lldp_json0(host)]
    edits, follows = [], []
    for i in range(repeats):
        edits.append(await cpu_of(_edit(writer, host.name, texts[i % 2])))
        fabric = follower.fabric
        follows.append(await cpu_of(follower.refresh))
        if follower.fabric is fabric:
            raise RuntimeError("the follower did not adopt the edit")
    return edits, follows


def _edit(writer: ServiceState, host: str, lldp: str) -> Callable[[], Any]:
    """The writer's edit that replaces ``host``'s LLDP capture (parsed in the edit)."""
    def replaced(feeds: Feeds) -> Feeds:
        return feeds.with_capture(host, "lldp", parse_capture("lldp", lldp, host))
    return lambda: writer.update_feeds(replaced)


async def _idle_refreshes(follower: ServiceState, redis_pid: int, calls: int) -> dict[str, Any]:
    """CPU per ``refresh()`` that finds nothing new: this process, and redis-server."""
    redis_before, started = cpu_seconds(redis_pid), time.perf_counter()
    client_s = await cpu_of(lambda: _refresh_many(follower, calls))
    wall_s = time.perf_counter() - started
    return {"idle_refresh": {
        "calls": calls, "client_cpu_us": round(client_s / calls * 1e6, 1),
        "redis_cpu_us": round((cpu_seconds(redis_pid) - redis_before) / calls * 1e6, 1),
        "wall_us": round(wall_s / calls * 1e6, 1)}}


async def _refresh_many(follower: ServiceState, calls: int) -> None:
    for _ in range(calls):
        await follower.refresh()


def _cpu_summary(samples_s: Sequence[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1e3
    return {"n": len(ms), "median": round(float(np.median(ms)), 1),
            "min": round(float(ms.min()), 1), "max": round(float(ms.max()), 1)}


# -- report ----------------------------------------------------------------------------------------

def _lag_rows(result: dict[str, Any], part: str) -> list[str]:
    rows = []
    for run in result["runs"]:
        put, lag = run[part]["put_on_a"], run[part]["b_serves_it"]
        rows.append(f"| {run['poll_s']:g} | {lag['n']} | {put['p50_ms']:.0f} | "
                    f"{lag['p50_ms']:.0f} / {lag['p90_ms']:.0f} / {lag['max_ms']:.0f} | "
                    f"{run['poll_s'] * 500:.0f} / {run['poll_s'] * 900:.0f} / "
                    f"{run['poll_s'] * 1000:.0f} |")
    return rows


def _idle_rows(result: dict[str, Any]) -> list[str]:
    rows = []
    for run in result["runs"]:
        cpu = run["idle_cpu_pct_of_core"]
        rows.append(f"| {run['poll_s']:g} | {cpu['replica_a']:.2f} | {cpu['replica_b']:.2f} "
                    f"| {cpu['redis']:.2f} |")
    return rows


def _follow_lines(follow: dict[str, Any], polls: Sequence[float]) -> list[str]:
    idle = follow["idle_refresh"]
    per_core = ", ".join(f"{(idle['client_cpu_us'] + idle['redis_cpu_us']) / p / 1e4:.3f} % "
                         f"of a core at {p:g} s" for p in polls)
    cold, edit, adopt = (follow[k] for k in ("cold_start_ms", "writer_edit_one_capture_ms",
                                             "follower_adopts_edit_ms"))
    return [
        "| what | CPU ms: median (min–max) |", "| --- | --- |",
        f"| cold start of a replica (`ServiceState.start()`: read the document, parse every "
        f"capture, build the distance model), {cold['n']} starts | {cold['median']:.0f} "
        f"({cold['min']:.0f}–{cold['max']:.0f}) |",
        f"| writer: one-capture edit (`update_feeds`: parse, rebuild, write), {edit['n']} "
        f"edits | {edit['median']:.0f} ({edit['min']:.0f}–{edit['max']:.0f}) |",
        f"| follower: the `refresh()` that adopts that edit | {adopt['median']:.0f} "
        f"({adopt['min']:.0f}–{adopt['max']:.0f}) |", "",
        f"An idle `refresh()` (nothing changed; one `HMGET` of two versions), "
        f"{idle['calls']:,} calls: {idle['client_cpu_us']:.0f} µs of CPU in the replica "
        f"and {idle['redis_cpu_us']:.0f} µs in redis-server per call "
        f"({idle['wall_us']:.0f} µs wall), i.e. {per_core}. Loading all "
        f"{follow['hosts']} hosts' feeds on the writer (parse, build, write the "
        f"document) took {follow['writer_builds_from_all_feeds_ms']:.0f} ms of CPU."]


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The report as Markdown."""
    follow = result["follow"]
    polls = [run["poll_s"] for run in result["runs"]]
    lines = [
        "# Convergence between replicas", "",
        *harness.header_markdown(result, "bench/replica_convergence_bench.py",
                                 compared=False),
        f"redis-server {result['redis_version']} on loopback. The client, both replicas "
        "and Redis share the machine's two vCPUs: the wall-clock figures below are loose.",
        "",
        f"Two `toposched serve --redis` processes, A and B, per poll interval "
        f"(`TOPOSCHED_SHARED_POLL_S`); a {args.hosts}-host cluster posted to A as feeds. "
        f"Each round waits a random time (uniform over one poll interval), changes "
        f"something through A, and polls B every {args.probe_ms:g} ms (keep-alive HTTP) "
        "until B serves the change. The lag is from A's answer to B's first changed "
        "answer. The last column is what the poll phase alone would give (uniform "
        "over the interval: 50 % / 90 % / 100 % of it).", "",
        "## A capture edit on A → B serves the changed fabric", "",
        "`PUT /v1/topology/hosts/H/lldp` on A moving one NIC to another rail leaf (and "
        "back), then `GET /v1/topology/distance` on B until the tier flips.", "",
        "| poll s | rounds | PUT on A p50 ms | B serves it, ms: p50 / p90 / max | "
        "poll phase alone, ms |", "| ---: | ---: | ---: | ---: | ---: |",
        *_lag_rows(result, "fabric"), "",
        "## A placement applied on A → current on B", "",
        "`PUT /v1/placement` on A (a placement solved once on A, applied again each round), "
        "then `GET /v1/placement` on B until it serves A's `applied_at`.", "",
        "| poll s | rounds | PUT on A p50 ms | B serves it, ms: p50 / p90 / max | "
        "poll phase alone, ms |", "| ---: | ---: | ---: | ---: | ---: |",
        *_lag_rows(result, "placement"), "",
        "## The CPU cost of following", "",
        f"Idle replicas, {args.idle_s:g} s with no requests after the rounds (`/proc` "
        "utime + stime, 10 ms ticks, so ±0.1 % of a core over 10 s). This is all an "
        "idle replica on Redis does: the follow loop, the lease-expiry loop and the "
        "KV-event replication long-poll. The follow loop's own share is below this "
        "resolution: the in-process cost of an idle `refresh()` below is the figure "
        "for it.", "",
        "| poll s | replica A, % of a core | replica B, % of a core | redis-server, % |",
        "| ---: | ---: | ---: | ---: |", *_idle_rows(result), "",
        f"In process, at {follow['hosts']} hosts ({follow['gpus']} GPUs, synthetic HGX "
        "H100, every host's nvidia-smi and LLDP capture posted as feeds), on the same "
        "Redis (`time.process_time`, all threads of this process):", "",
        *_follow_lines(follow, polls), ""]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", default="0.5,0.1",
                        help="poll intervals to measure, seconds (TOPOSCHED_SHARED_POLL_S)")
    parser.add_argument("--rounds", type=int, default=30, help="changes per poll interval "
                        "and kind (fabric, placement)")
    parser.add_argument("--probe-ms", type=float, default=5.0,
                        help="how often the client asks B whether the change arrived")
    parser.add_argument("--hosts", type=int, default=3, help="hosts of the served cluster")
    parser.add_argument("--idle-s", type=float, default=10.0,
                        help="idle window per poll interval for the replicas' CPU")
    parser.add_argument("--big-hosts", type=int, default=128,
                        help="hosts of the cluster for the in-process CPU costs")
    parser.add_argument("--repeats", type=int, default=5,
                        help="cold starts and followed edits measured in process")
    parser.add_argument("--refresh-calls", type=int, default=5000,
                        help="idle refresh() calls measured in process")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random phases")
    parser.add_argument("--out", type=Path, default=RESULTS, help="report directory")
    harness.add_arguments(parser, conditions=("awake",), timing=False)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every part against one private redis-server."""
    redis = start_redis()
    try:
        with tempfile.TemporaryDirectory() as directory:
            logs = Path(directory)
            try:
                runs = [run_poll(redis, float(poll), i, args, logs)
                        for i, poll in enumerate(args.polls.split(","))]
            except BaseException:
                for log in logs.glob("replica-*.log"):
                    print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
                raise
        progress(f"in process: the CPU cost of following at {args.big_hosts} hosts")
        follow = asyncio.run(follow_costs(redis, args))
        version = redis_version(redis)
    finally:
        redis.stop()
    return {"runs": runs, "follow": follow, "redis_version": version}


def redis_version(redis: RedisServer) -> str:
    """The version redis-server reports (``INFO server``)."""
    client = Redis.from_url(redis.url, decode_responses=True)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the reports."""
    args = parse_args(argv)
    random.seed(args.seed)
    result = harness.wrap_main(args, "convergence-bench", ["redis"], lambda: run(args),
                               "bench/replica_convergence_bench.py", argv)
    result["arguments"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    harness.write_json(args.out / "replica_convergence.json", result)
    (args.out / "replica_convergence.md").write_text(markdown(result, args))
    progress(f"wrote {args.out / 'replica_convergence.md'}")


if __name__ == "__main__":
    main()
