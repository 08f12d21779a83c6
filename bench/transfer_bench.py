"""Benchmark: KV transfers through the full sidecar path, next to bare NIXL and memcpy.

Run: ``.venv/bin/python bench/transfer_bench.py [--quick] [--mem dram|vram] [--out DIR]``
Writes ``transfers.json`` and ``transfers.md`` (``transfers_vram.*`` with ``--mem vram``,
on a GPU host with torch and nixl-cuXX, see docs/install-gpu.md). Everything is
measured in one run on one machine: two processes on loopback, READ (decode pulls).

Rows:

* **sidecar** — ``POST /v1/transfers`` → the plan is built and queued → the decode
  sidecar's long-poll returns it → validation → NIXL (``make_prepped_xfer`` →
  ``transfer`` → poll) → report. ``nixl`` is the time the sidecar measured from request
  creation to completion (what it reports); ``end-to-end`` is the scheduler's
  ``finished_at − created_at`` (plan building, job delivery, execution, report).
* **bare NIXL** — bench/bare_nixl.py: the same transfer from a hand-written
  two-process script, progress thread off (as the sidecar) and on (NIXL's default).
* **memcpy** — ``numpy.copyto`` of the same size inside one process (an on-GPU
  ``Tensor.copy_`` with ``--mem vram``).

Repetitions move different blocks (the job's blocks shifted by one job length each
time, modulo the pool) in the sidecar and bare runs alike, so small transfers are not
measured on cache-resident buffers.

GB/s are 10^9 bytes per second of the median time.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bare_nixl import BarePair, rotated, run_bare  # noqa: E402
from tests.sidecar.harness import Cluster, cluster  # noqa: E402

MIB = 1 << 20
#: Bare NIXL doing what the sidecar does for a READ plan: no progress thread, no NIXL
#: notification (READ plans tell the target through the scheduler).
SIDECAR_LIKE: dict[str, Any] = {"prog_thread": False, "notif": "none", "target_poll_s": 0.005}
#: With a NIXL notification (what WRITE plans use): sent after completion, the target
#: polling every 0.2 ms (the sidecar's hot progress interval).
WITH_NOTIF: dict[str, Any] = {"prog_thread": False, "notif": "detached",
                              "target_poll_s": 0.0002}
#: Bare NIXL as a first script would: default config (progress thread on), the
#: notification attached to the request, the target checking every 5 ms.
DEFAULTS: dict[str, Any] = {"prog_thread": True, "notif": "attached", "target_poll_s": 0.005}
#: Requests arriving 5 ms apart, as they do through the scheduler, not back to back.
SPACED: dict[str, Any] = {**SIDECAR_LIKE, "gap_s": 0.005}
#: Memory kind of every pool in this run (``--mem``), passed to the bare runs too.
MEM: dict[str, Any] = {"mem": "dram"}
SIZES_MIB = (1, 4, 16, 64, 256, 1024)
#: Throughput runs alternate sidecar and bare batches this many times.
ROUNDS = 3


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def reps_for(nbytes: int, quick: bool) -> int:
    """Fewer repetitions for big transfers (the run stays under ~5 minutes)."""
    base = max(8, min(30, (512 * MIB) // nbytes))
    return max(2, base // 3) if quick else base


def median_gbps(nbytes: int, seconds: list[float]) -> float:
    """GB/s of the median time."""
    return nbytes / statistics.median(seconds) / 1e9


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


def sidecar_run(c: Cluster, name: str, blocks: list[int], reps: int, pool_blocks: int,
                src: str = "prefill", dst: str = "decode") -> dict[str, list[float] | int]:
    """Run one transfer ``reps`` times through the scheduler (blocks rotated through the
    pool, as in the bare runs); NIXL and end-to-end times."""
    nixl, e2e, delivery = [], [], []
    descriptors = 0
    for i in range(reps):
        plan_id = f"{name}-{i}"
        moved = list(rotated(blocks, i, pool_blocks))
        response = c.submit(src=src, dst=dst, src_blocks=moved, dst_blocks=moved,
                            plan_id=plan_id)
        response.raise_for_status()
        record = c.finished(plan_id, reports=2, timeout_s=120)
        if record["state"] != "done":
            raise RuntimeError(f"{plan_id} failed: {record['error']}")
        report = next(r for r in record["reports"] if r["role"] == "initiator")
        nixl.append(report["duration_s"])
        e2e.append(record["finished_at"] - record["created_at"])
        delivery.append(record["delivered_at"] - record["created_at"])
        descriptors = report["descriptors"]
    return {"nixl": nixl, "e2e": e2e, "delivery": delivery, "descriptors": descriptors}


def start_pair(c: Cluster, *, block_bytes: int, blocks: int, regions: int = 1) -> None:
    """(Re)start the prefill and decode sidecars with the given pool."""
    for proc in c.sidecars.values():
        proc.stop()
    c.sidecars.clear()
    layout = ("--layout", "per_layer", "--regions", str(regions)) if regions > 1 else ()
    extra = ("--verify", "off", "--poll-wait", "10", "--mem", MEM["mem"], *layout)
    for name in ("prefill", "decode"):
        c.sidecar(name, kv_blocks=blocks, block_bytes=block_bytes, extra=extra)
    sidecar_run(c, f"warm-up-{block_bytes}-{regions}", [0], 1, blocks)


def throughput(c: Cluster, quick: bool) -> list[dict[str, Any]]:
    """1 MiB … 1 GiB, contiguous: sidecar and bare NIXL interleaved in rounds (so a change
    in background load hits both), then NIXL defaults and memcpy."""
    sizes = SIZES_MIB[:-1] if quick else SIZES_MIB
    blocks = sizes[-1]
    progress(f"throughput: starting sidecars and a bare pair with {blocks} × 1 MiB pools")
    start_pair(c, block_bytes=MIB, blocks=blocks)
    jobs = [(f"{s}MiB", list(range(s)), max(1, reps_for(s * MIB, quick) // ROUNDS))
            for s in sizes]
    side: dict[str, dict[str, list[float]]] = {name: {"nixl": [], "e2e": []}
                                               for name, _, _ in jobs}
    bare: dict[str, list[float]] = {name: [] for name, _, _ in jobs}
    with BarePair(block_bytes=MIB, num_blocks=blocks, **SIDECAR_LIKE, **MEM) as pair:
        for round_no in range(ROUNDS):
            progress(f"throughput: round {round_no + 1}/{ROUNDS}, sidecar then bare")
            for name, ids, reps in jobs:
                result = sidecar_run(c, f"tp-{name}-{round_no}", ids, reps, blocks)
                for key in ("nixl", "e2e"):
                    times = result[key]
                    assert isinstance(times, list)
                    side[name][key] += times
            for name, times in pair.run(jobs).items():
                if name in bare:
                    bare[name] += times
    for proc in c.sidecars.values():
        proc.stop()
    c.sidecars.clear()
    progress("throughput: bare NIXL, NIXL defaults")
    defaults = run_bare(block_bytes=MIB, num_blocks=blocks, jobs=jobs, **DEFAULTS, **MEM)
    rows = []
    for (name, _ids, reps), size in zip(jobs, sizes, strict=True):
        nbytes = size * MIB
        progress(f"throughput: memcpy {name}")
        mem = memcpy_times(nbytes, reps * ROUNDS, MEM["mem"], blocks * MIB)
        rows.append({
            "size_mib": size, "reps": reps * ROUNDS,
            "sidecar_nixl_gbps": median_gbps(nbytes, side[name]["nixl"]),
            "sidecar_e2e_gbps": median_gbps(nbytes, side[name]["e2e"]),
            "bare_gbps": median_gbps(nbytes, bare[name]),
            "bare_default_gbps": median_gbps(nbytes, defaults[name]),
            "memcpy_gbps": median_gbps(nbytes, mem)})
    return rows


def scattered(c: Cluster, quick: bool) -> list[dict[str, Any]]:
    """1,024 × 64 KiB blocks, a random half moved (a delta), block-major vs per-layer."""
    rng = np.random.default_rng(7)
    chosen = sorted(int(b) for b in rng.choice(1024, size=512, replace=False))
    runs = 1 + sum(1 for a, b in itertools.pairwise(chosen) if b != a + 1)
    reps = 3 if quick else 8
    rows = []
    for layout, regions in (("block_major", 1), ("per_layer (32 layers × K/V)", 64)):
        progress(f"scattered: {layout}")
        start_pair(c, block_bytes=64 * 1024, blocks=1024, regions=regions)
        result = sidecar_run(c, f"sc-{regions}", chosen, reps, 1024)
        nixl_t = result["nixl"]
        assert isinstance(nixl_t, list)
        bare = run_bare(block_bytes=64 * 1024, num_blocks=1024, regions=regions,
                        jobs=[("half", chosen, reps)], **SIDECAR_LIKE, **MEM)["half"]
        nbytes = len(chosen) * 64 * 1024
        rows.append({"layout": layout, "blocks": len(chosen), "runs": runs,
                     "descriptors": result["descriptors"],
                     "sidecar_blocks_per_s": len(chosen) / statistics.median(nixl_t),
                     "sidecar_gbps": median_gbps(nbytes, nixl_t),
                     "bare_blocks_per_s": len(chosen) / statistics.median(bare),
                     "bare_gbps": median_gbps(nbytes, bare)})
    return rows


def small(c: Cluster, quick: bool) -> list[dict[str, Any]]:
    """Per-transfer overhead at 4 KiB and 64 KiB, and the control plane's share."""
    reps = 40 if quick else 200
    progress("small: starting sidecars with 4 KiB blocks")
    start_pair(c, block_bytes=4096, blocks=64)
    jobs = [("4KiB", [0], reps), ("64KiB", list(range(16)), reps)]
    side = {}
    for name, ids, n in jobs:
        progress(f"small: sidecar {name} × {n}")
        side[name] = sidecar_run(c, f"sm-{name}", ids, n, 64)
    progress("small: bare NIXL (same as sidecar, spaced 5 ms, with notification, defaults)")
    bare = run_bare(block_bytes=4096, num_blocks=64, jobs=jobs, **SIDECAR_LIKE, **MEM)
    spaced = run_bare(block_bytes=4096, num_blocks=64, jobs=jobs, **SPACED, **MEM)
    notified = run_bare(block_bytes=4096, num_blocks=64, jobs=jobs, **WITH_NOTIF, **MEM)
    bare_default = run_bare(block_bytes=4096, num_blocks=64, jobs=jobs, **DEFAULTS, **MEM)
    rows = []
    for name, _, _ in jobs:
        nixl_t, e2e_t, deliv = side[name]["nixl"], side[name]["e2e"], side[name]["delivery"]
        assert isinstance(nixl_t, list) and isinstance(e2e_t, list) and isinstance(deliv, list)
        overhead = [e - n for e, n in zip(e2e_t, nixl_t, strict=True)]
        rows.append({"size": name, "reps": reps,
                     "bare_us_p50": statistics.median(bare[name]) * 1e6,
                     "bare_spaced_us_p50": statistics.median(spaced[name]) * 1e6,
                     "bare_notif_us_p50": statistics.median(notified[name]) * 1e6,
                     "bare_default_us_p50": statistics.median(bare_default[name]) * 1e6,
                     "sidecar_nixl_us_p50": statistics.median(nixl_t) * 1e6,
                     "sidecar_nixl_us_p99": pct(nixl_t, 0.99) * 1e6,
                     "e2e_ms_p50": statistics.median(e2e_t) * 1e3,
                     "e2e_ms_p99": pct(e2e_t, 0.99) * 1e3,
                     "delivery_ms_p50": statistics.median(deliv) * 1e3,
                     "delivery_ms_p99": pct(deliv, 0.99) * 1e3,
                     "control_plane_ms_p50": statistics.median(overhead) * 1e3,
                     "control_plane_ms_p99": pct(overhead, 0.99) * 1e3})
    return rows


def render(result: dict[str, Any]) -> str:
    """The markdown report."""
    env = result["environment"]
    lines = ["# KV transfers: sidecar path vs bare NIXL vs memcpy", "",
             f"Generated by `bench/transfer_bench.py{' --quick' if result['quick'] else ''}` "
             f"on {env['machine']} ({env['cpus']} CPUs, Python {env['python']}), "
             f"{env['date']}, load average {env['load_before']} before / "
             f"{env['load_after']} after (the machine is shared). Memory "
             f"{result['mem'].upper()}, two processes on loopback, READ "
             "(decode pulls), NIXL 1.5.1 UCX backend. All baselines measured in the same run; "
             "sidecar and bare throughput batches alternate in "
             f"{ROUNDS} rounds. With a load average above the CPU count, expect "
             "run-to-run swings of tens of percent in every column.",
             "", "## Throughput, contiguous (1 MiB blocks → 1 descriptor)", "",
             "| size | sidecar NIXL GB/s | sidecar end-to-end GB/s | bare NIXL GB/s "
             "(same as sidecar) | bare NIXL GB/s (defaults) | memcpy GB/s | sidecar / bare "
             "| sidecar / memcpy |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["throughput"]:
        lines.append(
            f"| {r['size_mib']} MiB | {r['sidecar_nixl_gbps']:.2f} | {r['sidecar_e2e_gbps']:.2f}"
            f" | {r['bare_gbps']:.2f} | {r['bare_default_gbps']:.2f} | {r['memcpy_gbps']:.2f} "
            f"| {r['sidecar_nixl_gbps'] / r['bare_gbps']:.2f} "
            f"| {r['sidecar_nixl_gbps'] / r['memcpy_gbps']:.2f} |")
    lines += ["", "## Scattered: 1,024 × 64 KiB blocks, random half (512) moved", "",
              "| layout | runs | descriptors after merging | sidecar blocks/s | sidecar GB/s "
              "| bare blocks/s | bare GB/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["scattered"]:
        lines.append(f"| {r['layout']} | {r['runs']} | {r['descriptors']} | "
                     f"{r['sidecar_blocks_per_s']:,.0f} | {r['sidecar_gbps']:.2f} | "
                     f"{r['bare_blocks_per_s']:,.0f} | {r['bare_gbps']:.2f} |")
    lines += ["", "## Small transfers: per-transfer cost", "",
              "| size | bare NIXL µs p50: same as sidecar / spaced 5 ms / with NIXL notification "
              "/ defaults "
              "| sidecar NIXL µs p50 / p99 | end-to-end ms p50 / p99 "
              "| job delivery (long-poll) ms p50 / p99 | control plane ms p50 / p99 |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in result["small"]:
        lines.append(f"| {r['size']} | {r['bare_us_p50']:.0f} / {r['bare_spaced_us_p50']:.0f}"
                     f" / {r['bare_notif_us_p50']:.0f} / {r['bare_default_us_p50']:.0f} | "
                     f"{r['sidecar_nixl_us_p50']:.0f} "
                     f"/ {r['sidecar_nixl_us_p99']:.0f} | {r['e2e_ms_p50']:.2f} / "
                     f"{r['e2e_ms_p99']:.2f} | {r['delivery_ms_p50']:.2f} / "
                     f"{r['delivery_ms_p99']:.2f} | {r['control_plane_ms_p50']:.2f} / "
                     f"{r['control_plane_ms_p99']:.2f} |")
    lines += ["", "Bare columns: *same as sidecar* = progress thread off, no NIXL notification, "
              "back to back; *spaced* = the same with 5 ms idle before each request (as "
              "requests arrive through the scheduler); *with NIXL notification* = sent after "
              "completion, target polling every 0.2 ms (WRITE plans); *defaults* = progress "
              "thread on, notification attached, target polling every 5 ms.", "",
              "Job delivery = the scheduler's clock from queuing the plan to handing it "
              "to the decode sidecar's waiting long-poll. Control plane = end-to-end − NIXL "
              "time: plan building, delivery, validation, the report reaching the scheduler.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every part in one go and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer reps, no 1 GiB")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--mem", choices=("dram", "vram"), default="dram",
                        help="pool memory; vram needs torch with CUDA (docs/install-gpu.md)")
    args = parser.parse_args(argv)
    MEM["mem"] = args.mem
    started = time.time()
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp, cluster(Path(tmp), lease_ttl_s=30,
                                                       deadline_s=60) as c:
        result = {"quick": args.quick, "mem": args.mem, "throughput": throughput(c, args.quick),
                  "scattered": scattered(c, args.quick), "small": small(c, args.quick)}
    result["environment"] = {"machine": platform.machine(), "python": platform.python_version(),
                             "cpus": os.cpu_count(), "load_before": load_before,
                             "load_after": round(os.getloadavg()[0], 2),
                             "date": time.strftime("%Y-%m-%d"),
                             "seconds": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "transfers" if args.mem == "dram" else "transfers_vram"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{stem}.md").write_text(render(result))
    progress(f"done in {time.time() - started:.0f}s → {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
