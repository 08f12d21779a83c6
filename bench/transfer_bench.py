"""Benchmark: KV transfers through the full sidecar path, next to bare NIXL and memcpy.

Run: ``.venv/bin/python bench/transfer_bench.py [--sizes 1 4 16 64 256] [--parts
throughput small scattered] [--mem dram|vram] [--repeats 3] [--out DIR]``. Writes
``transfers.json`` and ``transfers.md`` (``transfers_vram.*`` with ``--mem vram``, on a
GPU host with torch and nixl-cuXX, see docs/install-gpu.md). Everything is measured in
one run on one machine through :mod:`bench.harness`: two processes per pair on
loopback, READ (decode pulls), sides alternating repetition by repetition.

Sides:

* **sidecar end to end** — ``POST /v1/transfers`` → the plan is built and queued → the
  decode sidecar's job stream carries it → validation → NIXL (``make_prepped_xfer`` →
  ``transfer`` → poll) → report; timed on the scheduler's clock from the plan's
  creation to the report recorded, split into stages with the report's stamps;
* **bare NIXL (best)** — bench/bare_nixl.py with the progress thread off, spinning on
  completion, no notification (the anchor); **bare NIXL (progress thread on)** —
  NIXL's default configuration, measured beside it to show which is best here;
* **memcpy** — ``numpy.copyto`` of the same size inside one process.

Repetitions move different blocks (the job's blocks shifted by one job length each
time, modulo the pool) on every side alike, so small transfers are not measured on
cache-resident buffers.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.bare_nixl import BarePair, rotated  # noqa: E402
from sidecar.config import SidecarConfig  # noqa: E402
from tests.sidecar.harness import AUTH, Cluster, cluster, wait_for  # noqa: E402

MIB = 1 << 20
#: Seconds a sidecar may take to fill and register its pool (256 MiB under load).
SIDECAR_START_S = 300.0
#: Bare NIXL doing what the sidecar does for a READ plan: no progress thread, no NIXL
#: notification (READ plans tell the target through the scheduler).
SIDECAR_LIKE: dict[str, Any] = {"prog_thread": False, "notif": "none", "target_poll_s": 0.005}
#: Bare NIXL as a first script would: default config (progress thread on), the
#: notification attached to the request, the target checking every 5 ms.
DEFAULTS: dict[str, Any] = {"prog_thread": True, "notif": "attached", "target_poll_s": 0.005}
#: Memory kind of every pool in this run (``--mem``) and the CPU the copy runs on
#: alone (``--copy-cpu``: the decode sidecar's job thread, the bare initiator), passed
#: to every bare pair.
MEM: dict[str, Any] = {"mem": "dram", "copy_cpu": None}
SIZES_MIB = (1, 4, 16, 64, 256)


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def reps_for(nbytes: int) -> int:
    """Transfers per side per repetition: fewer for big transfers."""
    return max(4, min(20, (256 * MIB) // nbytes))


def memcpy_times(nbytes: int, reps: int, mem: str = "dram",
                 pool_bytes: int | None = None) -> list[float]:
    """Seconds of numpy.copyto of ``nbytes`` (on-GPU copy for vram); successive copies
    use successive slices of ``pool_bytes`` buffers, like the transfers."""
    if mem == "vram":
        return _device_copy_times(nbytes, reps)
    total = max(pool_bytes or nbytes, nbytes)
    src = np.ones(total, dtype=np.uint8)
    dst = np.ones(total, dtype=np.uint8)
    slots = total // nbytes
    times = []
    for rep in range(reps):
        start_at = (rep % slots) * nbytes
        begin = time.perf_counter()
        np.copyto(dst[start_at:start_at + nbytes], src[start_at:start_at + nbytes])
        times.append(time.perf_counter() - begin)
    return times


def _device_copy_times(nbytes: int, reps: int) -> list[float]:
    torch: Any = importlib.import_module("torch")

    src = torch.ones(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.zeros_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


STAGES = ("queue", "delivery", "sidecar", "nixl", "report")


def sidecar_run(c: Cluster, name: str, blocks: list[int], reps: int, pool_blocks: int,
                src: str = "prefill", dst: str = "decode") -> dict[str, Any]:
    """Run one transfer ``reps`` times through the scheduler (blocks rotated through the
    pool, as in the bare runs).

    Per transfer: ``e2e`` (the scheduler's clock, plan created → the initiator's report
    processed), ``client`` (this process: POST sent → the done record seen), the sidecar's
    ``nixl`` time, and the stages (see :data:`STAGES`): queue (created → written to the
    job stream), delivery (→ the sidecar has parsed the job), sidecar (→ NIXL request
    created: validation, peer lookup), nixl (→ complete), report (→ the scheduler
    recorded the report: the engine hook, the report stream, the coordinator). All on
    one host's wall clock.
    """
    out: dict[str, Any] = {"nixl": [], "e2e": [], "client": [], "delivery": [],
                           "stages": {stage: [] for stage in STAGES}, "bytes": set()}
    descriptors = 0
    for i in range(reps):
        plan_id = f"{name}-{i}"
        moved = list(rotated(blocks, i, pool_blocks))
        sent = time.perf_counter()
        response = c.submit(src=src, dst=dst, src_blocks=moved, dst_blocks=moved,
                            plan_id=plan_id)
        response.raise_for_status()
        record = c.finished(plan_id, reports=1, timeout_s=120)
        client = time.perf_counter() - sent
        if record["state"] != "done":
            raise RuntimeError(f"{plan_id} failed: {record['error']}")
        report = next(r for r in record["reports"] if r["role"] == "initiator")
        spans = _spans(record)
        for stage, value in spans.items():
            out["stages"][stage].append(value)
        out["nixl"].append(report["duration_s"])
        out["e2e"].append(record["finished_at"] - record["created_at"])
        out["client"].append(client)
        out["delivery"].append(record["delivered_at"] - record["created_at"])
        out["bytes"].add(report["bytes"])
        descriptors = report["descriptors"]
    out["descriptors"] = descriptors
    return out


def sidecar_side(c: Cluster, name: str, blocks: list[int], reps: int, pool_blocks: int,
                 nbytes: int) -> harness.Side:
    """The sidecar path as a harness side: end-to-end samples, stages, bytes moved."""
    counter = itertools.count()

    def prepare() -> Any:
        def body() -> harness.Samples:
            result = sidecar_run(c, f"{name}-{next(counter)}", blocks, reps, pool_blocks)
            stages = {**result["stages"], "client": result["client"]}
            return harness.Samples(sorted(result["bytes"]), result["e2e"], stages)
        return body
    return harness.Side("sidecar end-to-end", prepare, ops=reps)


def bare_side(label: str, pair: BarePair, name: str, blocks: list[int], reps: int,
              nbytes: int) -> harness.Side:
    """A bare NIXL pair as a harness side (the initiator times each transfer itself)."""
    def prepare() -> Any:
        def body() -> harness.Samples:
            times = pair.run([(name, blocks, reps)])[name]
            return harness.Samples([nbytes], times)
        return body
    return harness.Side(label, prepare, ops=reps)


def memcpy_side(nbytes: int, reps: int, pool_bytes: int) -> harness.Side:
    """``numpy.copyto`` of the same size in one process, as a harness side."""
    def prepare() -> Any:
        return lambda: harness.Samples([nbytes], memcpy_times(nbytes, reps, MEM["mem"],
                                                              pool_bytes))
    return harness.Side("memcpy", prepare, ops=reps)


def start_pair(c: Cluster, *, block_bytes: int, blocks: int, regions: int = 1) -> None:
    """(Re)start the prefill and decode sidecars with the given pool."""
    for proc in c.sidecars.values():
        proc.stop()
    c.sidecars.clear()
    layout = ("--layout", "per_layer", "--regions", str(regions)) if regions > 1 else ()
    extra = ("--verify", "off", "--poll-wait", "10", "--mem", MEM["mem"],
             "--max-inflight", str(SIDECAR_MAX_INFLIGHT), *layout)
    pinned = () if MEM["copy_cpu"] is None else ("--copy-cpu", str(MEM["copy_cpu"]))
    started = [c.sidecar(name, kv_blocks=blocks, block_bytes=block_bytes,
                         extra=(*extra, *pinned) if name == "decode" else extra, wait=False)
               for name in ("prefill", "decode")]
    for proc in started:  # big pools take a while to fill and register on a loaded host
        wait_for(lambda proc=proc: c._serving(proc), SIDECAR_START_S, "a sidecar")
    sidecar_run(c, f"warm-up-{block_bytes}-{regions}", [0], 1, blocks)


#: The sidecars' ``--max-inflight`` (their default): initiator transfers in flight at once.
SIDECAR_MAX_INFLIGHT: int = SidecarConfig.max_inflight
#: Transfers in flight at once in the pipelined part (1: one after another).
INFLIGHT = (1, 2, 4)


def pipelined_count(nbytes: int) -> int:
    """Transfers per side per repetition in the pipelined part."""
    return max(16, min(64, (512 * MIB) // nbytes))


class _Caller:
    """One keep-alive HTTP/1.1 connection to the scheduler over a plain socket.

    The bench's own requests share the 2 vCPUs with the scheduler, the sidecars and the
    copy, so they should cost as little CPU as they can: ``http.client`` parses every
    answer's headers with the ``email`` package and builds a message object, ~3x this
    (measured: the submitter's CPU per pipelined transfer, docs/dev-notes.md). Only what
    the scheduler answers is read: a status line, headers and a ``Content-Length`` body.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host = f"{parts.hostname or '127.0.0.1'}:{parts.port}"
        self._sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port),
                                              timeout=120)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._auth = AUTH["Authorization"]

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One request; the JSON answer (a RuntimeError on a 4xx/5xx)."""
        data = b"" if body is None else json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: "
                f"{self._auth}\r\nContent-Type: application/json\r\nContent-Length: "
                f"{len(data)}\r\n{extra}\r\n")
        self._sock.sendall(head.encode() + data)
        status, text = self._answer()
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {text[:300]!r}")
        answer: dict[str, Any] = json.loads(text)
        return answer

    def _answer(self) -> tuple[int, bytes]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4:]
        lines = head.split("\r\n")
        fields = dict(line.split(":", 1) for line in lines[1:])
        length = next((int(v) for k, v in fields.items() if k.lower() == "content-length"),
                      None)
        if length is None:
            raise RuntimeError(f"answer without Content-Length: {lines[0]!r}")
        while len(self._buffer) < length:
            self._fill()
        text, self._buffer = self._buffer[:length], self._buffer[length:]
        return int(lines[0].split()[1]), text

    def _fill(self) -> None:
        chunk = self._sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the scheduler closed the connection")
        self._buffer += chunk

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()


def _ended(caller: _Caller, plan_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record``, or the record long-polled until the transfer ended and the initiator
    reported."""
    while record["state"] == "pending" or not any(r["role"] == "initiator"
                                                  for r in record["reports"]):
        record = caller.call("GET", f"/v1/transfers/{plan_id}?wait_s=2&ended=true")
    return record


#: Processes whose CPU the pipelined part charges to each transfer (``cpu:NAME`` stages).
CPU_PROCESSES = ("scheduler", "decode sidecar", "prefill sidecar", "submitter")


def thread_stats(pid: int) -> dict[int, tuple[int, int]]:
    """tid → (CPU ns, run-queue delay ns) of ``pid``'s live threads, from
    ``/proc/PID/task/TID/schedstat`` (empty off Linux or for a process gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    out: dict[int, tuple[int, int]] = {}
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                cpu, delay = (int(v) for v in stat.read().split()[:2])
        except (OSError, ValueError):
            continue
        out[int(tid)] = (cpu, delay)
    return out


def process_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``'s live threads. Threads that exit meanwhile are lost, so
    use it for long-lived processes; this process's own CPU comes from
    :func:`own_cpu_s`."""
    return sum(cpu for cpu, _ in thread_stats(pid).values()) / 1e9


def own_cpu_s() -> float:
    """CPU seconds of this process, exited threads included (``getrusage``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cluster_cpu_s(c: Cluster) -> dict[str, float]:
    """CPU seconds so far of the scheduler, the two sidecars and this process (the
    submitter: on loopback it shares the vCPUs with the rest)."""
    return {"scheduler": process_cpu_s(c.server.popen.pid),
            "decode sidecar": process_cpu_s(c.sidecars["decode"].popen.pid),
            "prefill sidecar": process_cpu_s(c.sidecars["prefill"].popen.pid),
            "submitter": own_cpu_s()}


def cpu_per_transfer(before: dict[str, float], after: dict[str, float],
                     count: int) -> dict[str, list[float]]:
    """``cpu:NAME`` stages: each process's CPU seconds per transfer over a repetition."""
    return {f"cpu:{name}": [(after[name] - before[name]) / count] for name in before}


def sidecar_pipelined(c: Cluster, name: str, blocks: list[int], count: int, inflight: int,
                      pool_blocks: int) -> dict[str, Any]:
    """``count`` transfers through the scheduler with ``inflight`` at a time (one caller
    thread each: submit, wait for the end, submit the next). ``total``: the scheduler's
    clock from the first plan created to the last initiator report recorded; per
    transfer, the stages as in :func:`sidecar_run`."""
    next_index = itertools.count()
    lock = threading.Lock()
    records: list[dict[str, Any]] = []
    failures: list[str] = []

    def caller_loop() -> None:
        caller = _Caller(c.url)
        try:
            while True:
                with lock:
                    i = next(next_index)
                if i >= count or failures:
                    return
                moved = list(rotated(blocks, i, pool_blocks))
                plan_id = f"{name}-{i}"
                # One request per transfer: the answer waits for the end (RFC 7240).
                record = _ended(caller, plan_id, caller.call("POST", "/v1/transfers", {
                    "src": "prefill", "dst": "decode", "src_blocks": moved,
                    "dst_blocks": moved, "plan_id": plan_id}, {"Prefer": "wait=10"}))
                with lock:
                    records.append(record)
        except Exception as exc:  # reported below, on the bench's thread
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            caller.close()

    threads = [threading.Thread(target=caller_loop) for _ in range(inflight)]
    cpu_before = cluster_cpu_s(c)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = cpu_per_transfer(cpu_before, cluster_cpu_s(c), count)
    bad = [r["plan"]["plan_id"] for r in records if r["state"] != "done"]
    if failures or bad or len(records) != count:
        raise RuntimeError(f"pipelined {name}: {failures or bad or len(records)}")
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for record in records:
        for stage, value in _spans(record).items():
            stages[stage].append(value)
    total = (max(r["finished_at"] for r in records) - min(r["created_at"] for r in records))
    nbytes = {r["reports"][0]["bytes"] for r in records if r["reports"]}
    return {"total": total, "stages": {**stages, **cpu}, "bytes": sorted(nbytes)}


def _spans(record: dict[str, Any]) -> dict[str, float]:
    """A done record's stages (see :data:`STAGES`)."""
    report = next(r for r in record["reports"] if r["role"] == "initiator")
    done_at = report["started_at"] + report["duration_s"]
    return {"queue": record["delivered_at"] - record["created_at"],
            "delivery": report["received_at"] - record["delivered_at"],
            "sidecar": report["started_at"] - report["received_at"],
            "nixl": report["duration_s"], "report": record["finished_at"] - done_at}


def pipelined_sides(c: Cluster, pair: BarePair, size: int, count: int,
                    pool_blocks: int) -> list[harness.Side]:
    """Bare NIXL and the sidecar end to end, each with 1, 2 and 4 transfers in flight."""
    ids, nbytes = list(range(size)), size * MIB
    counter = itertools.count()

    def bare(k: int) -> harness.Side:
        def prepare() -> Any:
            def body() -> harness.Samples:
                pids = pair.pids()
                before = {name: process_cpu_s(pid) for name, pid in pids.items()}
                seconds = pair.run_pipelined(ids, count, k)
                after = {name: process_cpu_s(pid) for name, pid in pids.items()}
                return harness.Samples([nbytes], [seconds],
                                       cpu_per_transfer(before, after, count))
            return body
        return harness.Side(f"bare NIXL k={k}", prepare, ops=count)

    def sidecar(k: int) -> harness.Side:
        def prepare() -> Any:
            def body() -> harness.Samples:
                out = sidecar_pipelined(c, f"pl-{size}-{k}-{next(counter)}", ids, count, k,
                                        pool_blocks)
                return harness.Samples(out["bytes"], [out["total"]], out["stages"])
            return body
        return harness.Side(f"sidecar k={k}", prepare, ops=count)

    return [*(bare(k) for k in INFLIGHT), *(sidecar(k) for k in INFLIGHT)]


def pipelined(c: Cluster, sizes: list[int], pool_blocks: int,
              run: harness.Session) -> list[dict[str, Any]]:
    """The same transfers with 1, 2 and 4 in flight, bare NIXL and the sidecar end to
    end alternating (call with the throughput part's sidecars running)."""
    rows = []
    with BarePair(block_bytes=MIB, num_blocks=pool_blocks, **SIDECAR_LIKE, **MEM) as pair:
        for size in sizes:
            count = pipelined_count(size * MIB)
            progress(f"pipelined: {size} MiB, {count} transfers per side per repetition")
            result = harness.compare(pipelined_sides(c, pair, size, count, pool_blocks),
                                     repeats=run.repeats, warmup=run.warmup,
                                     tag="transfer-bench")
            rows.append({"size_mib": size, "nbytes": size * MIB, "count": count,
                         **result.as_dict(),
                         "totals": {name: side.samples for name, side in result.sides.items()}})
    return rows


def _best(row: dict[str, Any], kind: str) -> str:
    """The side of ``kind`` (bare / sidecar) with the shortest median total."""
    names = [n for n in row["totals"] if n.startswith(kind)]
    return min(names, key=lambda n: harness.percentile(row["totals"][n], 50))


def _pipelined_gbps(row: dict[str, Any], side: str) -> float:
    return float(row["count"] * row["nbytes"] / harness.percentile(row["totals"][side], 50)
                 / 1e9)


def pipelined_ratio(row: dict[str, Any]) -> harness.Stats:
    """Best sidecar / best bare NIXL throughput, paired repetition by repetition."""
    bare, side = row["totals"][_best(row, "bare")], row["totals"][_best(row, "sidecar")]
    return harness.Stats(tuple(b / s for b, s in zip(bare, side, strict=True)))


BEST = "bare NIXL (best: progress thread off)"
DEFAULT = "bare NIXL (progress thread on)"


def throughput(c: Cluster, sizes: list[int], run: harness.Session,
               pipelined_rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Contiguous transfers: bare NIXL at its best settings (the anchor), the sidecar end
    to end and memcpy, alternating repetitions of each size (:mod:`bench.harness`); with
    ``pipelined_rows``, the pipelined comparison (:func:`pipelined`) on the same pools,
    into that list; then bare NIXL with NIXL's default progress thread beside the
    anchor again.

    The progress-thread pair runs in a pass of its own: its two agents' threads spin
    (~1/3 of a vCPU each here) even while idle, which would load both vCPUs during
    the other sides' turns."""
    blocks = max(sizes)
    progress(f"throughput: starting sidecars and the bare pair with {blocks} × 1 MiB pools")
    start_pair(c, block_bytes=MIB, blocks=blocks)
    rows = []
    with BarePair(block_bytes=MIB, num_blocks=blocks, **SIDECAR_LIKE, **MEM) as best:
        for size in sizes:
            nbytes, ids = size * MIB, list(range(size))
            reps = reps_for(nbytes)
            progress(f"throughput: {size} MiB, {reps} transfers per side per repetition")
            result = harness.compare(
                [bare_side(BEST, best, f"{size}MiB", ids, reps, nbytes),
                 sidecar_side(c, f"tp-{size}", ids, reps, blocks, nbytes),
                 memcpy_side(nbytes, reps, blocks * MIB)],
                repeats=run.repeats, warmup=run.warmup, tag="transfer-bench")
            rows.append({"size_mib": size, "nbytes": nbytes, "reps": reps,
                         **result.as_dict()})
    if pipelined_rows is not None:
        pipelined_rows += pipelined(c, sizes, blocks, run)
    for proc in c.sidecars.values():
        proc.stop()
    c.sidecars.clear()
    progress("throughput: bare NIXL with the progress thread on, beside the anchor")
    with BarePair(block_bytes=MIB, num_blocks=blocks, **SIDECAR_LIKE, **MEM) as best, \
            BarePair(block_bytes=MIB, num_blocks=blocks, **DEFAULTS, **MEM) as default:
        for row in rows:
            size, nbytes, reps = row["size_mib"], row["nbytes"], row["reps"]
            ids = list(range(size))
            result = harness.compare(
                [bare_side(BEST, best, f"{size}MiB", ids, reps, nbytes),
                 bare_side(DEFAULT, default, f"{size}MiB", ids, reps, nbytes)],
                repeats=run.repeats, warmup=run.warmup, tag="transfer-bench")
            row["progress_thread_pass"] = {"nbytes": nbytes, **result.as_dict()}
    return rows


def scattered(c: Cluster, run: harness.Session) -> list[dict[str, Any]]:
    """1,024 × 64 KiB blocks, a random half moved (a delta), block-major vs per-layer."""
    rng = np.random.default_rng(7)
    chosen = sorted(int(b) for b in rng.choice(1024, size=512, replace=False))
    runs = 1 + sum(1 for a, b in itertools.pairwise(chosen) if b != a + 1)
    nbytes, reps = len(chosen) * 64 * 1024, 4
    rows = []
    for layout, regions in (("block_major", 1), ("per_layer (32 layers × K/V)", 64)):
        progress(f"scattered: {layout}")
        start_pair(c, block_bytes=64 * 1024, blocks=1024, regions=regions)
        with BarePair(block_bytes=64 * 1024, num_blocks=1024, regions=regions,
                      **SIDECAR_LIKE, **MEM) as best:
            result = harness.compare(
                [bare_side(BEST, best, "half", chosen, reps, nbytes),
                 sidecar_side(c, f"sc-{regions}", chosen, reps, 1024, nbytes)],
                repeats=run.repeats, warmup=run.warmup, tag="transfer-bench")
        rows.append({"layout": layout, "blocks": len(chosen), "runs": runs, "nbytes": nbytes,
                     **result.as_dict()})
    for proc in c.sidecars.values():
        proc.stop()
    c.sidecars.clear()
    return rows


def small(c: Cluster, run: harness.Session) -> list[dict[str, Any]]:
    """Per-transfer cost at 4 KiB and 64 KiB: bare NIXL (best) vs the sidecar end to end,
    alternating; the control plane is end-to-end minus the sidecar's NIXL time."""
    progress("small: starting sidecars with 4 KiB blocks")
    start_pair(c, block_bytes=4096, blocks=64)
    rows = []
    with BarePair(block_bytes=4096, num_blocks=64, **SIDECAR_LIKE, **MEM) as best:
        for name, ids in (("4KiB", [0]), ("64KiB", list(range(16)))):
            nbytes, reps = len(ids) * 4096, 50
            progress(f"small: {name}")
            result = harness.compare(
                [bare_side(BEST, best, name, ids, reps, nbytes),
                 sidecar_side(c, f"sm-{name}", ids, reps, 64, nbytes)],
                repeats=run.repeats, warmup=run.warmup, tag="transfer-bench")
            side = result.sides["sidecar end-to-end"]
            control = [e - n for e, n in zip(side.samples, side.stages["nixl"], strict=True)]
            rows.append({"size": name, "nbytes": nbytes, "reps": reps, **result.as_dict(),
                         "control_plane_seconds": {"p50": harness.percentile(control, 50),
                                                   "p99": harness.percentile(control, 99)}})
    for proc in c.sidecars.values():
        proc.stop()
    c.sidecars.clear()
    return rows


def _p50(row: dict[str, Any], side: str, stage: str | None = None) -> float:
    cell = row["sides"][side]
    return float(cell["stages_seconds"][stage]["p50"] if stage else cell["latency_seconds"]["p50"])


def _gbps(row: dict[str, Any], side: str, stage: str | None = None) -> float:
    return float(row["nbytes"] / _p50(row, side, stage) / 1e9)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


#: Issue 15's targets: control plane p50 per small transfer, and sidecar / bare NIXL
#: (best) from this size up.
CONTROL_PLANE_TARGET_S = 0.001
RATIO_TARGET, RATIO_FROM_MIB = 0.8, 16


def targets(result: dict[str, Any]) -> list[str]:
    """Whether this run meets the targets, figure by figure."""
    lines = ["## Targets (issue 15)", ""]
    for r in result["small"]:
        p50 = r["control_plane_seconds"]["p50"]
        met = "met" if p50 <= CONTROL_PLANE_TARGET_S else "**not met**"
        lines.append(f"- control plane p50 ≤ 1 ms at {r['size']}: {_ms(p50)} ms — {met}")
    for r in result["throughput"]:
        if r["size_mib"] < RATIO_FROM_MIB:
            continue
        ratio = _p50(r, BEST) / _p50(r, "sidecar end-to-end")
        met = "met" if ratio >= RATIO_TARGET else "**not met**"
        lines.append(f"- sidecar / bare NIXL (best) ≥ {RATIO_TARGET}× at {r['size_mib']} MiB, "
                     f"one transfer at a time: {ratio:.2f}× — {met}")
    for r in result.get("pipelined", []):
        if r["size_mib"] < RATIO_FROM_MIB:
            continue
        stats = pipelined_ratio(r)
        met = "met" if stats.median >= RATIO_TARGET else "**not met**"
        lines.append(f"- sidecar / bare NIXL (best) ≥ {RATIO_TARGET}× at {r['size_mib']} MiB, "
                     f"pipelined ({_best(r, 'sidecar')} vs {_best(r, 'bare')}): "
                     f"{stats.median:.2f}× [{stats.min:.2f}–{stats.max:.2f}] — {met}")
    return lines


def render_pipelined(rows: list[dict[str, Any]]) -> list[str]:
    """The pipelined section of the report."""
    if not rows:
        return []
    ks = " / ".join(str(k) for k in INFLIGHT)
    lines = ["## Throughput, pipelined: transfers in flight at once", "",
             "The same contiguous transfers (1 MiB blocks), *count* per side per repetition, "
             f"with k = {ks} in flight. Bare NIXL: one initiator posts k prepared requests "
             "at once and checks them in turn, posting the next as each completes (first "
             "post → last completion, its own clock). Sidecar: k caller threads in this "
             "process each submit a transfer (`POST /v1/transfers` with `Prefer: wait=10`: "
             "the answer comes when it ended) before submitting the next, into a decode "
             f"sidecar that keeps up to {SIDECAR_MAX_INFLIGHT} transfers in flight "
             "(`--max-inflight`, its default); the scheduler's clock from the first plan "
             "created to the last initiator report recorded. **Anchor: the best bare NIXL "
             "of the three k** (sequential included) per size; the ratio pairs the best "
             "sidecar k with it repetition by repetition (median [min–max]).", "",
             f"| size | count | bare NIXL GB/s, k = {ks} | sidecar GB/s, k = {ks} | "
             "**best sidecar / best bare** | sidecar stages at its best k, p50 ms: queue · "
             "delivery · sidecar · NIXL · report |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bare = " / ".join(f"{_pipelined_gbps(r, f'bare NIXL k={k}'):.2f}" for k in INFLIGHT)
        side = " / ".join(f"{_pipelined_gbps(r, f'sidecar k={k}'):.2f}" for k in INFLIGHT)
        best, stats = _best(r, "sidecar"), pipelined_ratio(r)
        stages = " · ".join(_ms(r["sides"][best]["stages_seconds"][stage]["p50"])
                            for stage in STAGES)
        lines.append(f"| {r['size_mib']} MiB | {r['count']} | {bare} | {side} | "
                     f"**{stats.median:.2f}×** [{stats.min:.2f}–{stats.max:.2f}] "
                     f"({best} vs {_best(r, 'bare')}) | {stages} |")
    return [*lines, "", *render_pipelined_cpu(rows)]


def render_pipelined_cpu(rows: list[dict[str, Any]]) -> list[str]:
    """CPU per transfer of every process, at the best k of each kind."""
    lines = ["CPU per transfer at each kind's best k (ms, median over the repetitions; "
             "`/proc/PID/task/*/schedstat` for the servers and the bare pair, `getrusage` "
             "for this process, the submitter). On loopback every process shares the 2 "
             "vCPUs with the copy, which runs on the initiator's CPU (UCX over CMA: "
             "`process_vm_readv`), so the control plane's CPU is what the copy competes "
             "with:", "",
             "| size | " + " | ".join(CPU_PROCESSES) + " | **sidecar path total** | "
             "bare initiator | bare target |", "|---:|" + "---:|" * (len(CPU_PROCESSES) + 3)]
    for r in rows:
        side, bare = r["sides"][_best(r, "sidecar")], r["sides"][_best(r, "bare")]
        cells = [_cpu_ms(side, name) for name in CPU_PROCESSES]
        total = sum(cells)
        lines.append(f"| {r['size_mib']} MiB | " + " | ".join(f"{v:.2f}" for v in cells)
                     + f" | **{total:.2f}** | {_cpu_ms(bare, 'bare initiator'):.2f} | "
                     f"{_cpu_ms(bare, 'bare target'):.2f} |")
    return [*lines, ""]


def _cpu_ms(side: dict[str, Any], name: str) -> float:
    """A side's median CPU milliseconds per transfer of process ``name`` (0 if absent)."""
    stage = side["stages_seconds"].get(f"cpu:{name}")
    return float(stage["p50"]) * 1e3 if stage else 0.0


def _pinning_line(cpu: int | None) -> str:
    """How the copy's CPU was set, on both sides."""
    if cpu is None:
        return ("Copy CPU: not pinned (`--copy-cpu none`): every process goes where the "
                "kernel puts it.")
    return (f"Copy CPU: **vCPU {cpu} on both sides** — the decode sidecar runs with "
            f"`--copy-cpu {cpu}` (its job thread, which posts every transfer and on this "
            "transport does the copy, alone on that CPU; its other threads on the rest) "
            "and the bare initiator pins itself there too; the scheduler, the prefill "
            "sidecar, the bare target and this process are not pinned. On loopback "
            "every socket wake-up otherwise tends to put the woken process beside the "
            "copy (docs/transfers.md §7); `--copy-cpu none` measures that.")


def render(result: dict[str, Any]) -> str:
    """The markdown report."""
    lines = ["# KV transfers: sidecar end to end vs bare NIXL (and memcpy)", "",
             *harness.environment_markdown(result["environment"], "bench/transfer_bench.py",
                                           result["command"]),
             harness.condition_line(result["condition"]), "",
             f"Memory {result['mem'].upper()}, two processes per pair on loopback, READ "
             "(decode pulls), NIXL UCX backend. Per size, the sides alternate repetition by "
             "repetition; each repetition moves the size `reps` times (blocks rotated "
             "through the pool on every side alike). GB/s = bytes / p50 of the "
             "per-transfer times pooled over the repetitions.", "",
             "Anchor — **bare NIXL at its best settings**: a hand-written two-process "
             "script with prepared descriptor lists (one descriptor per contiguous run, "
             "the sidecar's own layout), `make_prepped_xfer` → `transfer` → spin on "
             "`check_xfer_state` → release, timed by the initiator itself, and NIXL's "
             "progress thread **off**: on 2 vCPUs the progress thread competes with the "
             "spinning caller (docs/dev-notes.md), and the same run measures it on "
             "(NIXL's default) beside it, in a pass of its own: its threads spin even "
             "while idle and would load the vCPUs during the other sides' turns. No "
             "notification: READ plans tell the target "
             "through the scheduler. Sidecar end to end = the scheduler's clock from the "
             "plan's creation to the initiator's report recorded; *client* = this "
             "process from `POST /v1/transfers` to seeing the done record.", "",
             _pinning_line(result.get("copy_cpu")), "",
             "## Throughput, contiguous (1 MiB blocks → 1 descriptor)", "",
             "| size | bare NIXL best GB/s | bare NIXL, progress thread on (best in "
             "that pass) | sidecar "
             "end-to-end GB/s | **sidecar / bare best** | sidecar NIXL-only GB/s | "
             "client-side GB/s | memcpy GB/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["throughput"]:
        ratio = _p50(r, BEST) / _p50(r, "sidecar end-to-end")
        lines.append(
            f"| {r['size_mib']} MiB | {_gbps(r, BEST):.2f} | "
            f"{_gbps(r['progress_thread_pass'], DEFAULT):.2f} "
            f"({_gbps(r['progress_thread_pass'], BEST):.2f}) | "
            f"{_gbps(r, 'sidecar end-to-end'):.2f} | **{ratio:.2f}×** | "
            f"{_gbps(r, 'sidecar end-to-end', 'nixl'):.2f} | "
            f"{_gbps(r, 'sidecar end-to-end', 'client'):.2f} | {_gbps(r, 'memcpy'):.2f} |")
    lines += ["", "Stages of the sidecar's end-to-end time, p50 in ms (each stage's own "
              "median; they need not add up to the end-to-end median):", "",
              "| size | end-to-end | queue | delivery | sidecar | NIXL | report | "
              "control plane (end-to-end − NIXL) |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["throughput"]:
        side = "sidecar end-to-end"
        lines.append(f"| {r['size_mib']} MiB | {_ms(_p50(r, side))} | " + " | ".join(
            _ms(_p50(r, side, stage)) for stage in STAGES) +
            f" | {_ms(_p50(r, side) - _p50(r, side, 'nixl'))} |")
    lines += ["", "Stages: *queue* = plan stored → the scheduler begins writing the job to "
              "the decode sidecar's job stream; *delivery* = → the sidecar has parsed the "
              "job; *sidecar* = → the NIXL request is created (plan validation, peer "
              "lookup, on the same thread); *NIXL* = → complete; *report* = → the "
              "scheduler recorded the sidecar's report (engine hook, the write on the "
              "report stream, the coordinator).", "",
              *render_pipelined(result.get("pipelined", [])),
              "## Small transfers: per-transfer cost", "",
              "| size | bare NIXL best µs p50 | sidecar end-to-end ms p50 / p99 | control "
              "plane ms p50 / p99 | queue | delivery | sidecar | NIXL | report (ms p50) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["small"]:
        side = r["sides"]["sidecar end-to-end"]
        cp = r["control_plane_seconds"]
        lines.append(
            f"| {r['size']} | {_p50(r, BEST) * 1e6:.0f} | {_ms(side['latency_seconds']['p50'])}"
            f" / {_ms(side['latency_seconds']['p99'])} | {_ms(cp['p50'])} / {_ms(cp['p99'])} | "
            + " | ".join(_ms(_p50(r, "sidecar end-to-end", s)) for s in STAGES) + " |")
    lines += ["", *targets(result), "",
              "## Scattered: 1,024 × 64 KiB blocks, random half (512) moved", "",
              "| layout | runs | bare NIXL best GB/s | sidecar NIXL GB/s | sidecar end-to-end "
              "GB/s | sidecar / bare best |", "|---|---:|---:|---:|---:|---:|"]
    for r in result["scattered"]:
        ratio = _p50(r, BEST) / _p50(r, "sidecar end-to-end")
        lines.append(f"| {r['layout']} | {r['runs']} | {_gbps(r, BEST):.2f} | "
                     f"{_gbps(r, 'sidecar end-to-end', 'nixl'):.2f} | "
                     f"{_gbps(r, 'sidecar end-to-end'):.2f} | {ratio:.2f}× |")
    lines.append("")
    return "\n".join(lines)


def run_condition(args: argparse.Namespace, run: harness.Session,
                  condition: str) -> dict[str, Any]:
    """Every requested part under one CPU condition, on a cluster of its own."""
    started = time.perf_counter()
    result: dict[str, Any] = {"mem": args.mem, "copy_cpu": MEM["copy_cpu"],
                              "throughput": [], "pipelined": [], "small": [],
                              "scattered": []}
    with harness.cpu_condition(condition) as cond, \
            tempfile.TemporaryDirectory() as tmp, \
            cluster(Path(tmp), lease_ttl_s=30, deadline_s=60) as c:
        progress(f"CPU condition {condition}")
        if "throughput" in args.parts:
            result["throughput"] = throughput(
                c, args.sizes, run,
                result["pipelined"] if "pipelined" in args.parts else None)
        if "small" in args.parts:
            result["small"] = small(c, run)
        if "scattered" in args.parts:
            result["scattered"] = scattered(c, run)
    result["environment"] = {**run.finish(),
                             "wall_seconds": round(time.perf_counter() - started, 1)}
    result["condition"] = cond.as_dict()
    return result


def _with_condition(argv_text: str, condition: str) -> str:
    """The command line that reruns one condition's report."""
    words, out, skipping = argv_text.split(), [], False
    for word in words:
        if word == "--conditions":
            skipping = True
            continue
        if skipping and not word.startswith("--"):
            continue
        skipping = False
        out.append(word)
    return " ".join([*out, "--conditions", condition])


def copy_cpu(flag: str) -> int | None:
    """``--copy-cpu``: a CPU number, ``none``, or ``auto`` (CPU 0 on a machine where
    this process may use two CPUs or more, else none)."""
    if flag == "none":
        return None
    if flag == "auto":
        return 0 if len(os.sched_getaffinity(0)) >= 2 and 0 in os.sched_getaffinity(0) \
            else None
    return int(flag)


def main(argv: list[str] | None = None) -> int:
    """Run every part in one go and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES_MIB),
                        help="contiguous sizes in MiB (default: %(default)s)")
    parser.add_argument("--parts", nargs="+",
                        default=["throughput", "pipelined", "small", "scattered"],
                        choices=["throughput", "pipelined", "small", "scattered"],
                        help="pipelined runs inside throughput, on its pools")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--mem", choices=("dram", "vram"), default="dram",
                        help="pool memory; vram needs torch with CUDA (docs/install-gpu.md)")
    parser.add_argument("--copy-cpu", default="auto", metavar="CPU|none|auto",
                        help="the CPU the copy runs on alone, on both sides: the decode "
                             "sidecar's --copy-cpu and the bare initiator's (auto, the "
                             "default: CPU 0 where this process may use two or more)")
    harness.add_arguments(parser, conditions=("awake",), repeats=3, warmup=1)
    args = parser.parse_args(argv)
    MEM["mem"] = args.mem
    MEM["copy_cpu"] = copy_cpu(args.copy_cpu)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    with harness.session(args, packages=["nixl"], tag="transfer-bench") as run:
        for condition in run.conditions:
            result = run_condition(args, run, condition)
            result["command"] = ("flock /tmp/toposched-bench.lock .venv/bin/python "
                                 "bench/transfer_bench.py " + _with_condition(argv_text,
                                                                              condition)
                                 ).rstrip()
            stem = "transfers" if args.mem == "dram" else "transfers_vram"
            if condition != "awake":  # awake is the headline report's condition
                stem += f"_{condition}"
            if args.copy_cpu == "none":  # the copy not pinned: a report of its own
                stem += "_unpinned"
            harness.write_json(args.out / f"{stem}.json", result)
            (args.out / f"{stem}.md").write_text(render(result))
            progress(f"{condition}: done in {result['environment']['wall_seconds']} s → "
                     f"{args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
