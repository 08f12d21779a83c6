"""Probe: where a pipelined sidecar transfer's time goes, process by process.

Run: ``flock /tmp/toposched-bench.lock .venv/bin/python bench/transfer_probe.py
[--size 16] [--batches 2] [--count 128] [--inflight 4] [--condition awake|idle|loaded]
[--pin] [--json]``.

A diagnostic, not a report (nothing is compared or written to bench/results): one
scheduler and a prefill/decode sidecar pair on loopback, batches of ``count`` READs of
``size`` MiB with ``inflight`` caller threads (bench/transfer_bench.py's pipelined
sidecar side), and per transfer: the wall time, each process's CPU, and each decode
sidecar thread's CPU and run-queue delay (time runnable but not running) from
``/proc/PID/task/TID/schedstat``. On these 2-vCPU VMs the copy runs on the decode
sidecar's job thread (UCX over CMA), so its run-queue delay is the time other processes
took from the copy. ``--pin`` puts the decode sidecar on vCPU 0 and everything else on
vCPU 1 (an exclusive core for the copy, as Kubernetes' static CPU manager would give a
sidecar container): the spread from process placement goes away, so A/B runs of two
trees agree far better pinned (docs/dev-notes.md, tenth round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.transfer_bench import (  # noqa: E402
    MIB,
    own_cpu_s,
    sidecar_pipelined,
    start_pair,
    thread_stats,
)
from tests.sidecar.harness import cluster  # noqa: E402


def pin(pids: dict[str, int]) -> None:
    """The decode sidecar's threads on vCPU 0, every other process's on vCPU 1."""
    for name, pid in pids.items():
        cpus = {0} if name == "decode" else {1}
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cpus)


def batch(c: Any, pids: dict[str, int], name: str, args: argparse.Namespace
          ) -> dict[str, Any]:
    """One batch of transfers; per-transfer figures in milliseconds."""
    ids, n = list(range(args.size)), args.count
    before = {k: thread_stats(p) for k, p in pids.items() if k != "submitter"}
    own, started = own_cpu_s(), time.perf_counter()
    out = sidecar_pipelined(c, name, ids, n, args.inflight, args.size)
    wall, own = time.perf_counter() - started, own_cpu_s() - own
    after = {k: thread_stats(p) for k, p in pids.items() if k != "submitter"}

    def per(ns: float) -> float:
        return round(ns / n / 1e6, 3)

    cpu = {k: per(sum(v[0] - before[k].get(t, (0, 0))[0] for t, v in after[k].items()))
           for k in after}
    decode = {tid: {"cpu_ms": per(v[0] - before["decode"].get(tid, (0, 0))[0]),
                    "run_queue_ms": per(v[1] - before["decode"].get(tid, (0, 0))[1])}
              for tid, v in after["decode"].items()}
    stages = {k: round(statistics.median(v) * 1e3, 3) for k, v in out["stages"].items()
              if not k.startswith("cpu:")}
    return {"wall_ms": round(wall / n * 1e3, 3),
            "scheduler_clock_ms": round(out["total"] / n * 1e3, 3),
            "cpu_ms": {**cpu, "submitter": round(own / n * 1e3, 3)},
            "decode_threads": {t: v for t, v in decode.items()
                               if v["cpu_ms"] > 0.01 or v["run_queue_ms"] > 0.01},
            "stages_p50_ms": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16, help="MiB a transfer")
    parser.add_argument("--count", type=int, default=128, help="transfers a batch")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--inflight", type=int, default=4, help="caller threads")
    parser.add_argument("--condition", choices=harness.CONDITIONS, default="awake")
    parser.add_argument("--pin", action="store_true",
                        help="decode sidecar on vCPU 0, everything else on vCPU 1")
    parser.add_argument("--json", action="store_true", help="one JSON object per batch")
    args = parser.parse_args(argv)
    with harness.cpu_condition(args.condition), tempfile.TemporaryDirectory() as tmp, \
            cluster(Path(tmp), lease_ttl_s=30, deadline_s=60) as c:
        start_pair(c, block_bytes=MIB, blocks=args.size)
        pids = {"scheduler": c.server.popen.pid, "prefill": c.sidecars["prefill"].popen.pid,
                "decode": c.sidecars["decode"].popen.pid, "submitter": os.getpid()}
        if args.pin:
            pin(pids)
        sidecar_pipelined(c, "warm-up", list(range(args.size)), 32, args.inflight,
                          args.size)
        for i in range(args.batches):
            result = batch(c, pids, f"probe-{i}", args)
            if args.json:
                print(json.dumps(result), flush=True)
                continue
            cpu = " · ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms"].items())
            threads = "; ".join(f"{t}: {v['cpu_ms']:.2f} + rq {v['run_queue_ms']:.2f}"
                                for t, v in result["decode_threads"].items())
            print(f"batch {i}: {result['wall_ms']:.2f} ms a transfer | CPU ms: {cpu}\n"
                  f"  decode threads (CPU + run-queue ms): {threads}\n"
                  f"  stages p50 ms: {result['stages_p50_ms']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
