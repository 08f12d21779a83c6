"""What the operator's page (/ui) costs the route path, and how it holds at 8,192 GPUs.

One run starts its own ``toposched serve`` (512-GPU synthetic fabric, 256 registered
workers, no sidecars: plans queue up, as in ``route_http_bench.py``; each request's load
reservation lasts ``REQUEST_S``) and compares, with
``bench/harness.py`` (alternating repetitions, identical request streams, outputs
checked equal):

* **no page** (anchor) — ``POST /v1/route`` closed loop, nothing else connected;
* **1 page** / **5 pages** — the same loop while 1 or 5 pages follow the event stream
  ``GET /v1/ui/events``. Each page is a separate process reading and parsing the stream
  as the browser's script does (a browser's rendering runs on the operator's machine,
  not on the scheduler's host, so it is not on this host's cores here either).

Figures per side: route requests per second (client wall clock), the server's CPU time
per route (``/proc/PID/stat``), and what the pages received (events, decisions, bytes)
so that a page that was not really following cannot pass for one. The comparison runs
at the default tick (``TOPOSCHED_UI_INTERVAL_S=1``) and at a 10x faster one (0.1 s).

It also times the ring the route path fills (``RecentDecisions.add`` on a real
decision, in process), and, at 8,192 GPUs (1,024 hosts), what the page's reads cost the
server (cluster overview, a pod at GPU level) and how long headless Chromium takes to
draw the cluster and a pod (when ``chromium`` is installed). Writes
``bench/results/ui.{md,json}``::

    .venv/bin/python bench/ui_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.route_http_bench import (  # noqa: E402
    WORKERS,
    Pool,
    _registration,
    _wait_ready,
    closed_loop,
    cpu_seconds,
    encode,
    route_request,
)
from tests.servers import free_port, stop_process  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TAG = "ui"
#: KV blocks per worker: no sidecar finishes the queued transfers, so each route keeps
#: its blocks; prefix affinity sends a family of prompts to the same pair, and 4,096
#: blocks (the route bench's) ran out on some decode workers within one run.
BLOCKS = 65_536
#: How long each routed request holds its load: nobody releases the reservations here,
#: so they end by lifetime, as if every request ran this long (a worker takes 256 at
#: once; with the default 10-minute lifetime the favoured workers filled up mid-run).
REQUEST_S = 2.0
#: A page: reads the event stream, parses each event's JSON as the page's script does,
#: says "connected" on its first event and its totals (JSON) when told to stop.
PAGE = r"""
import json, signal, sys, httpx
seen = {"events": 0, "decisions": 0, "decision_items": 0, "bytes": 0}
def stop(*_): raise SystemExit(0)
signal.signal(signal.SIGTERM, stop)
try:
    with httpx.stream("GET", sys.argv[1], timeout=httpx.Timeout(10, read=None),
                      trust_env=False) as answer:
        name = ""
        for line in answer.iter_lines():
            seen["bytes"] += len(line) + 1
            if line.startswith("event: "):
                name = line[7:]
                seen["events"] += 1
                if name == "hello":
                    print("connected", flush=True)
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if name == "decisions":
                    seen["decisions"] += 1
                    seen["decision_items"] += len(data["items"])
finally:
    print(json.dumps(seen), flush=True)
"""


# -- the server and the pages ---------------------------------------------------------------

def _fabric(directory: Path, **shape: int) -> tuple[Path, list[str]]:
    from topology.synth import SynthParams, synth_cluster
    spec = synth_cluster(SynthParams(**shape))
    path = directory / f"fabric-{len(spec.hosts)}.json"
    spec.save(path)
    return path, spec.gpu_names()


@contextmanager
def server(fabric: Path, interval_s: float) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``toposched serve`` on a free port, the page's tick set to ``interval_s``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOPOSCHED_LEASE_TTL_S": "3600",
           "TOPOSCHED_UI_INTERVAL_S": str(interval_s),
           "TOPOSCHED_RESERVATION_TTL_S": str(REQUEST_S)}
    log = fabric.parent / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli.main", "serve", "--port", str(port), "--fabric",
             str(fabric), "--log-level", "warning"], cwd=ROOT, env=env, stderr=sink)
    try:
        yield port, process
    except BaseException:
        print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        stop_process(process)


class Pages:
    """Page processes following the event stream, one set (one side's) at a time; what
    each side's pages received is kept by side."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.owner = ""
        self.open: list[subprocess.Popen[str]] = []
        self.received: dict[str, list[dict[str, int]]] = {}

    def switch(self, owner: str, count: int) -> None:
        """Close the open pages, then open ``count`` for ``owner`` and wait until each has
        its first event."""
        self.close()
        self.owner = owner
        for _ in range(count):
            page = subprocess.Popen([sys.executable, "-c", PAGE,
                                     f"http://127.0.0.1:{self.port}/v1/ui/events"],
                                    stdout=subprocess.PIPE, text=True, cwd=ROOT)
            self.open.append(page)
            assert page.stdout is not None
            if page.stdout.readline().strip() != "connected":
                raise RuntimeError("a page did not connect to the event stream")

    def close(self) -> None:
        """Close the open pages, noting what they received under their side."""
        got = []
        for page in self.open:
            page.send_signal(signal.SIGTERM)
            out, _ = page.communicate(timeout=10)
            got.append(json.loads(out.strip().splitlines()[-1]))
        if got:
            self.received.setdefault(self.owner, []).append(_sum(got))
        self.open = []


async def register_workers(pool: Pool, port: int, gpus: list[str]) -> None:
    """256 workers, two GPUs each, alternating prefill and decode, ``BLOCKS`` each."""
    for i in range(WORKERS):
        reg = _registration(f"w{i:03d}", "prefill" if i % 2 == 0 else "decode",
                            gpus[2 * i:2 * i + 2], BLOCKS)
        await pool.expect(port, encode("POST", "/v1/workers", reg), 201)


# -- the comparison ------------------------------------------------------------------------------

def _side(name: str, pages: int, pid: int, crowd: Pages, loop: asyncio.AbstractEventLoop,
          pool: Pool, args: argparse.Namespace, server_cpu: dict[str, list[float]]
          ) -> harness.Side:
    """One side: its pages open (untimed), then the timed closed loop of routes."""
    offset = {"next": 0}

    def prepare() -> Callable[[], dict[str, int]]:
        crowd.switch(name, pages)  # the previous side's pages close before this is timed
        start = offset["next"]
        offset["next"] += args.requests

        def body() -> dict[str, int]:
            before = cpu_seconds(pid)
            result = loop.run_until_complete(closed_loop(_sender(pool, crowd.port, start),
                                                         args.requests, args.in_flight, 600))
            server_cpu[name].append((cpu_seconds(pid) - before) / result["requests"])
            return {"routed": result["requests"] - result["errors"],
                    "requests": result["requests"]}
        return body
    return harness.Side(name, prepare, ops=args.requests)


def _sum(got: list[dict[str, int]]) -> dict[str, int]:
    return {key: sum(g[key] for g in got) for key in got[0]}


#: Why routes were refused (503), over the whole run: the sides must route alike.
REFUSALS: Counter[str] = Counter()


def _sender(pool: Pool, port: int, start: int) -> Callable[[int], Any]:
    async def send(i: int) -> bool:
        code, body = await pool.call(port, route_request(start + i))
        if code == 503:
            REFUSALS[json.loads(body).get("detail", "?")[:200]] += 1
        elif code != 200:
            raise RuntimeError(f"{code}: {body[:300]!r}")
        return code == 200
    return send


def compare_pages(fabric: Path, gpus: list[str], interval_s: float,
                  args: argparse.Namespace, condition: harness.ConditionRecord
                  ) -> dict[str, Any]:
    """Route throughput and server CPU per route with 0, 1 and 5 pages connected."""
    loop, pool = asyncio.new_event_loop(), Pool()
    names = (("no page", 0), ("1 page", 1), ("5 pages", 5))
    server_cpu: dict[str, list[float]] = {name: [] for name, _ in names}
    with server(fabric, interval_s) as (port, process):
        crowd = Pages(port)
        try:
            loop.run_until_complete(_wait_ready(pool, port, 300))
            loop.run_until_complete(register_workers(pool, port, gpus))
            loop.run_until_complete(closed_loop(_sender(pool, port, 10_000_000), 300, 2, 60))
            sides = [_side(name, pages, process.pid, crowd, loop, pool, args, server_cpu)
                     for name, pages in names]
            try:
                result = harness.compare(sides, repeats=args.repeats, warmup=args.warmup,
                                         condition=condition, tag=TAG)
            except harness.Disagreement:
                harness.progress(TAG, f"refusals so far: {REFUSALS.most_common(3)}")
                raise
        finally:
            crowd.close()
            pool.close()
            loop.close()
    return {"interval_s": interval_s, "comparison": result.as_dict(),
            "ratios": {n: result.ratio(n, "no page").as_dict() for n in ("1 page", "5 pages")},
            "server_cpu_s_per_route": {n: harness.Stats(tuple(v[-args.repeats:])).as_dict()
                                       for n, v in server_cpu.items()},
            "pages_received": crowd.received}


# -- the ring and the 8,192-GPU reads ---------------------------------------------------------

def ring_cost() -> dict[str, float]:
    """Seconds per ``RecentDecisions.add`` of a real decision (ring full, steady state)."""
    from api.ui.decisions import RecentDecisions
    from tests.ui.test_decisions import _decision

    decision = _decision(blocks=16)
    ring = RecentDecisions()
    for _ in range(ring.size):
        ring.add(decision)
    runs = [min(timeit.repeat(lambda: ring.add(decision), number=100_000, repeat=5)) / 100_000
            for _ in range(3)]
    return {"add_s": min(runs), "ring_size": ring.size}


def frame_cost(fabric: Path, gpus: list[str], per_tick: int = 50, ticks: int = 40
               ) -> dict[str, Any]:
    """CPU seconds the publisher spends on one tick, in process: 256 workers (prefill in
    one zone, decode in the other, so every transfer crosses shared links and the traffic
    panel has links to list), ``per_tick`` routes between ticks."""
    import httpx

    from api.app import create_app
    from api.settings import Settings

    app = create_app(Settings(fabric=fabric, lease_ttl_s=3600, reservation_ttl_s=REQUEST_S))

    async def run() -> list[float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ui") as client:
            for i in range(WORKERS):
                reg = _registration(f"w{i:03d}", "prefill" if i < WORKERS // 2 else "decode",
                                    gpus[2 * i:2 * i + 2], BLOCKS)
                assert (await client.post("/v1/workers", json=reg)).status_code == 201
            feed, costs = app.state.ui_feed, []
            for tick in range(ticks):
                for i in range(per_tick):
                    body = route_request(tick * per_tick + i).split(b"\r\n\r\n", 1)[1]
                    await client.post("/v1/route", content=body,
                                      headers={"content-type": "application/json"})
                cpu = time.process_time()
                await feed.frame()
                costs.append(time.process_time() - cpu)
            return costs[5:]  # the first ticks build the fabric index and who-runs-where

    costs = sorted(asyncio.run(run()))
    links = len(app.state.runtime.inflight.bytes_by_link())
    return {"per_tick": per_tick, "ticks": len(costs), "links_in_flight": links,
            "median_s": costs[len(costs) // 2], "max_s": costs[-1]}


def scale_reads(fabric: Path, workers: int) -> dict[str, Any]:
    """The page's reads at 8,192 GPUs, in process: build and serialise each zoom."""
    from api.ui.fabric_view import FabricIndex, Occupancy, overview, pod_detail
    from scheduler.transfer.plan import WorkerRegistration
    from tests.scheduler.transfer.builders import registration
    from topology.spec import load_fabric

    spec = load_fabric(fabric)
    gpus = spec.gpu_names()
    regs: list[WorkerRegistration] = [
        registration(f"w{i}", gpus=gpus[8 * i:8 * i + 4]).model_copy(
            update={"role": "prefill" if i % 2 else "decode"}) for i in range(workers)]
    timed: dict[str, float] = {}

    def timeit_once(name: str, work: Callable[[], Any]) -> Any:
        best, value = float("inf"), None
        for _ in range(5):
            t0 = time.perf_counter()
            value = work()
            best = min(best, time.perf_counter() - t0)
        timed[name] = best
        return value

    index = timeit_once("index_s", lambda: FabricIndex(spec))
    occupancy = timeit_once("occupancy_s", lambda: Occupancy(None, regs))
    body = timeit_once("overview_s", lambda: overview(index, occupancy, "1.1")
                       .model_dump_json())
    pod = timeit_once("pod_s", lambda: pod_detail(index, occupancy, spec.pods[0].name, "1.1")
                      .model_dump_json())
    return {"gpus": len(gpus), "hosts": len(spec.hosts), "workers": workers, **timed,
            "overview_bytes": len(body), "pod_bytes": len(pod)}


def browser_render(fabric: Path, workdir: Path) -> dict[str, Any] | None:
    """Seconds headless Chromium takes to draw the 8,192-GPU cluster, then a pod."""
    from tests.ui.browser import Browser, BrowserError, chromium_binary
    try:
        chromium_binary()
    except BrowserError as exc:
        harness.progress(TAG, f"skipping the browser figures: {exc}")
        return None
    pool, loop = Pool(), asyncio.new_event_loop()
    with server(fabric, 1.0) as (port, _):
        loop.run_until_complete(_wait_ready(pool, port, 300))
        pool.close()
        loop.close()
        browser = Browser(workdir)
        try:
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                browser.navigate(f"http://127.0.0.1:{port}/ui")
                browser.wait_for("document.querySelectorAll('a.host').length === 1024",
                                 what="1,024 tiles", timeout_s=120)
                cluster = time.perf_counter() - t0
                t0 = time.perf_counter()
                browser.evaluate("location.hash = '#/pod/z0-p1'")
                browser.wait_for("document.querySelectorAll('.pod-detail .gpu').length === 1024",
                                 what="a pod's GPUs", timeout_s=120)
                runs.append({"cluster_s": cluster, "pod_s": time.perf_counter() - t0})
                browser.evaluate("location.hash = '#/'")
            nodes = browser.evaluate("document.querySelectorAll('*').length")
        finally:
            browser.close()
    return {"runs": runs, "dom_elements_at_pod_zoom": nodes}


READING = """How to read the two tables: every figure is end to end (a client process,
the server process, the page processes, on the same two vCPUs), and on a shared VM the
repetitions of one side spread widely (see the [min–max]); a paired ratio inside that
spread cannot be told from no effect. What a page costs the server does not depend on the route
rate: one frame per tick, built once for all pages (its CPU is measured below, in
process, where the noise is small), plus one socket write of the same bytes per page. The
route path itself pays only the ring append measured after that."""


# -- report ------------------------------------------------------------------------------------

def _rate(cmp: dict[str, Any], side: str) -> str:
    stats = cmp["comparison"]["sides"][side]["rate_per_second"]
    return f"{stats['median']:,.0f} [{stats['min']:,.0f}–{stats['max']:,.0f}]"


def _cpu(cmp: dict[str, Any], side: str) -> str:
    stats = cmp["server_cpu_s_per_route"][side]
    return f"{stats['median'] * 1e6:,.0f} [{stats['min'] * 1e6:,.0f}–{stats['max'] * 1e6:,.0f}]"


def _ratio(stats: dict[str, Any]) -> str:
    return f"{stats['median']:.3f}× [{stats['min']:.3f}–{stats['max']:.3f}]"


def _received(cmp: dict[str, Any], side: str) -> str:
    got = cmp["pages_received"].get(side)
    if not got or not got[0]:
        return "–"
    total = _sum(got)
    return (f"{total['events']:,} events, {total['decision_items']:,} decisions, "
            f"{total['bytes'] / 2**20:,.1f} MiB")


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    """The Markdown report."""
    env = result["environment"]
    lines = ["# The operator's page (/ui): cost to the route path, and 8,192 GPUs", "",
             *harness.environment_markdown(env, "bench/ui_bench.py",
                                           ".venv/bin/python bench/ui_bench.py")]
    for cmp in result["pages"]:
        lines += [f"## Route throughput with pages following the stream "
                  f"(tick {cmp['interval_s']:g} s)", "",
                  harness.condition_line(cmp["comparison"]["condition"]), "",
                  f"`POST /v1/route` closed loop, {args.requests} requests per repetition, "
                  f"{args.in_flight} in flight, 256 workers on a 512-GPU fabric, one server "
                  "process in memory. Outputs (requests routed) agreed every repetition.", "",
                  "| side | route req/s | server CPU µs / route | vs no page (req/s, paired) "
                  "| what the pages received |", "| --- | --- | --- | --- | --- |"]
        for side in ("no page", "1 page", "5 pages"):
            ratio = "1 (anchor)" if side == "no page" else _ratio(cmp["ratios"][side])
            lines.append(f"| {side} | {_rate(cmp, side)} | {_cpu(cmp, side)} | {ratio} | "
                         f"{_received(cmp, side)} |")
        lines.append("")
    lines += [READING, ""]
    ring = result["ring"]
    cpu_route = result["pages"][0]["server_cpu_s_per_route"]["no page"]["median"]
    lines += ["## The route path's own share", "",
              f"`RecentDecisions.add` (the one line the route path runs for the page) costs "
              f"**{ring['add_s'] * 1e9:,.0f} ns** per route (ring full, steady state, best of "
              f"3×5×100,000 calls): {100 * ring['add_s'] / cpu_route:.3f} % of the "
              f"{cpu_route * 1e6:,.0f} µs of server CPU a route takes above.", ""]
    frame = result["frame"]
    lines += ["## One tick of the page's publisher", "",
              f"In process, with {frame['per_tick']} routes between ticks (the most a tick "
              f"sends) and {frame['links_in_flight']} shared links carrying queued KV: "
              f"**{frame['median_s'] * 1e3:.2f} ms** of CPU per tick (median of "
              f"{frame['ticks']}, max {frame['max_s'] * 1e3:.2f} ms) to build the frame every "
              f"open page gets — {frame['median_s'] * 100:.2f} % of one core at the default "
              f"1 s tick, {frame['median_s'] * 1000:.1f} % at 0.1 s, whatever the number of "
              "pages (each page adds only the socket write of the same bytes).", ""]
    scale = result["scale"]
    lines += ["## 8,192 GPUs (1,024 hosts)", "",
              f"In process, {scale['workers']} registered workers, best of 5: fabric index "
              f"{scale['index_s'] * 1e3:.1f} ms (once per fabric), who-runs-where "
              f"{scale['occupancy_s'] * 1e3:.1f} ms (once per change), cluster overview "
              f"{scale['overview_s'] * 1e3:.0f} ms → {scale['overview_bytes'] / 1e3:,.0f} kB "
              f"(one tile per host; cached until the fabric, placement or workers change), "
              f"one pod at GPU level {scale['pod_s'] * 1e3:.0f} ms → "
              f"{scale['pod_bytes'] / 1e3:,.0f} kB.", ""]
    render = result.get("browser")
    if render:
        runs = render["runs"]
        cluster = sorted(r["cluster_s"] for r in runs)
        pod = sorted(r["pod_s"] for r in runs)
        lines += [f"Headless Chromium (same machine), navigate → 1,024 tiles drawn: median "
                  f"{cluster[len(cluster) // 2]:.2f} s [{cluster[0]:.2f}–{cluster[-1]:.2f}]; "
                  f"zoom to a pod → its 1,024 GPUs drawn: median {pod[len(pod) // 2]:.2f} s "
                  f"[{pod[0]:.2f}–{pod[-1]:.2f}] ({len(runs)} runs; "
                  f"{render['dom_elements_at_pod_zoom']:,} DOM elements at pod zoom).", ""]
    else:
        lines += ["Browser figures not measured (`--no-browser`, or no Chromium installed).", ""]
    return "\n".join(lines)


def main() -> None:
    """Run everything and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_arguments(parser, repeats=5, warmup=1)
    parser.add_argument("--requests", type=int, default=3000, help="routes per repetition")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--intervals", default="1,0.1", help="page ticks to compare at (s)")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory, harness.session(args, tag=TAG) as run:
        work = Path(directory)
        small, gpus = _fabric(work, zones=2, pods_per_zone=2, racks_per_pod=4, hosts_per_rack=4)
        large, _ = _fabric(work, zones=2, pods_per_zone=4, racks_per_pod=8, hosts_per_rack=16)
        pages = []
        for condition in run.conditions:
            with harness.cpu_condition(condition) as cond:
                pages += [compare_pages(small, gpus, float(interval), args, cond)
                          for interval in args.intervals.split(",")]
        result: dict[str, Any] = {"pages": pages, "ring": ring_cost(),
                                  "frame": frame_cost(small, gpus),
                                  "scale": scale_reads(large, workers=512)}
        if not args.no_browser:
            result["browser"] = browser_render(large, work)
        result["environment"] = run.finish()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ui.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "ui.md").write_text(report(result, args) + "\n")
    print(report(result, args))


if __name__ == "__main__":
    main()
