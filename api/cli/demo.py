"""``toposched demo``: the main job on the embedded example cluster, nothing to install."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from api.cli.output import print_json
from api.demo.cluster import DemoCluster, SidecarSpec
from api.demo.run import DemoDriver, DemoStats, drive
from api.demo.workload import BLOCK_TOKENS, AgenticWorkload
from topology.build import build_fabric
from topology.distance import DistanceModel
from topology.documents import packaged_config
from topology.errors import InputError
from topology.inventory import load_inventory
from topology.spec import FabricSpec
from topology.summary import render_text, summarize
from topology.tiers import Tier

KV_BYTES = 2_684_354_560  # an 8K-token Llama-3-70B prompt in fp16 (320 KiB/token)


#: The demo's workers on the example cluster. Zone a has the prefill workers and two
#: decode workers with little KV memory: one on a prefill worker's host (NVLink), one
#: in the next rack on the same rail leaf (RDMA through one switch). Zone b has one
#: decode worker with room to spare and no prefill worker: the router sends KV across
#: the zones when zone a's decode memory is taken, and keeps it close otherwise.
DEMO_WORKERS = (
    SidecarSpec("prefill-a", "prefill", "a1-r0-h00/gpu0", kv_blocks=64),
    SidecarSpec("prefill-a2", "prefill", "a1-r0-h01/gpu0", kv_blocks=64),
    SidecarSpec("decode-a-nvlink", "decode", "a1-r0-h00/gpu4", kv_blocks=16),
    SidecarSpec("decode-a-rail", "decode", "a1-r1-h00/gpu0", kv_blocks=16),
    SidecarSpec("decode-b", "decode", "b1-r0-h00/gpu0", kv_blocks=96),
)
#: How long a fake engine "decodes" a request before its KV blocks are released.
DECODE_MS = 5000.0
#: ``--engines``: the sidecars' fake engines, or real vLLM engines behind the gateway.
ENGINE_KINDS = ("fake", "vllm")


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser(
        "demo", help="run the whole system on the example cluster",
        description="Starts the scheduler (in memory), registers the example cluster, "
                    "launches sidecars with fake engines that move real bytes with NIXL, "
                    "sends an agentic request stream and shows what happens.")
    p.add_argument("--engines", choices=ENGINE_KINDS, default="fake",
                   help="fake: sidecars with fake engines (default, quick); vllm: two real "
                        "CPU vLLM engines behind the gateway, the KV moved by vLLM's "
                        "NixlConnector (needs .venv-vllm: ./scripts/bootstrap.sh test, or "
                        "TOPOSCHED_VLLM_PYTHON)")
    p.add_argument("--inventory", help="use this inventory instead of the embedded example")
    p.add_argument("--static", action="store_true",
                   help="only print the fabric and one KV transfer per tier (no processes)")
    p.add_argument("--sessions", type=int, help="agent sessions (default 8; fake engines)")
    p.add_argument("--turns", type=int, help="turns per session (default 4; fake engines)")
    p.add_argument("--block-mib", type=int,
                   help="MiB per KV block in the sidecars' pools (default 1; fake engines)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the processes up until Ctrl-C")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (or, with ``--static``, print the fabric's cost table)."""
    if args.engines == "vllm":
        return _vllm(args)
    path = args.inventory or packaged_config("clusters/example.yaml")
    spec = build_fabric(load_inventory(path))
    if args.static:
        return _static(spec, args.json)
    for name, default in (("sessions", 8), ("turns", 4), ("block_mib", 1)):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.sessions < 1 or args.turns < 1 or args.block_mib < 1:
        raise InputError("--sessions, --turns and --block-mib must be at least 1")
    return _live(spec, args)


def _vllm(args: argparse.Namespace) -> int:
    """The demo on real vLLM engines (fixed: one engine pair on the example cluster)."""
    from api.cli.demo_vllm import run_vllm_demo

    given = [flag for flag, value in (("--inventory", args.inventory), ("--static", args.static),
                                      ("--sessions", args.sessions), ("--turns", args.turns),
                                      ("--block-mib", args.block_mib))
             if value not in (None, False)]
    if given:
        raise InputError(f"demo --engines vllm: {', '.join(given)} only apply to the fake "
                         "engines' demo (the vLLM demo runs one engine pair on the example "
                         "cluster)")
    return run_vllm_demo(build_fabric(load_inventory(packaged_config("clusters/example.yaml"))),
                         args)


def _live(spec: FabricSpec, args: argparse.Namespace) -> int:
    console = Console(stderr=args.json)
    workload = AgenticWorkload(sessions=args.sessions, turns=args.turns)
    with tempfile.TemporaryDirectory(prefix="toposched-demo-") as tmp:
        workdir = Path(tmp)
        spec.save(workdir / "fabric.json")
        cluster = DemoCluster(workdir, model="llama-3-8b", block_bytes=args.block_mib << 20,
                              block_tokens=BLOCK_TOKENS, decode_ms=DECODE_MS)
        try:
            console.print(render_text(summarize(spec)))
            console.print(f"starting the scheduler and {len(DEMO_WORKERS)} sidecars (NIXL "
                          "agents) …")
            cluster.start_scheduler(workdir / "fabric.json")
            console.print(f"live view of the fabric, placement and traffic: {cluster.url}/ui")
            cluster.start_sidecars(DEMO_WORKERS)
            driver = DemoDriver(cluster)
            driver.stats.model = {row["tier"]: (row["latency_us"], row["bandwidth_gb_per_s"])
                                  for row in tier_examples(DistanceModel(spec))}
            stats = drive(driver, workload, show=not args.json)
            driver.finish()
            _finish(console, cluster, stats, args)
        finally:
            cluster.stop()
    return 0


def _finish(console: Console, cluster: DemoCluster, stats: DemoStats,
            args: argparse.Namespace) -> None:
    if args.json:
        print_json(stats.as_json())
    else:
        console.print()
        tiers = ", ".join(f"{count} over {tier}" for tier, count in stats.tiers.items())
        console.print(f"[bold]done[/bold]: {stats.routed} requests routed; "
                      f"{sum(stats.tiers.values())} KV transfers from a prefill worker to a "
                      f"decode worker, verified byte for byte: {tiers or 'none'}.")
        console.print(f"live view: {cluster.url}/ui   API docs: {cluster.url}/docs   "
                      f"metrics: {cluster.url}/metrics   logs: {cluster.workdir}")
    if args.keep_running:
        console.print("running until Ctrl-C …")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def _static(spec: FabricSpec, as_json: bool) -> int:
    model = DistanceModel(spec)
    rows = tier_examples(model)
    if as_json:
        print_json({"summary": summarize(spec), "kv_bytes": KV_BYTES, "tiers": rows})
        return 0
    console = Console()
    console.print(render_text(summarize(spec)))
    table = Table(title=f"moving one 8K-token Llama-3-70B KV cache ({KV_BYTES / 2**30:.1f} GiB)"
                  f" from {rows[0]['a'] if rows else '-'}")
    for column in ("tier", "to", "hops", "latency µs", "GB/s", "transfer ms"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["tier"], row["b"], str(row["hops"]), f"{row['latency_us']:.1f}",
                      f"{row['bandwidth_gb_per_s']:.1f}", f"{row['transfer_ms']:.2f}")
    console.print(table)
    return 0


def tier_examples(model: DistanceModel) -> list[dict[str, Any]]:
    """One destination GPU per tier reachable from the first GPU."""
    import numpy as np

    everyone = np.arange(len(model.names))
    tiers = model.tiers_from(0, everyone)
    rows = []
    for tier in Tier:
        hits = np.flatnonzero(tiers == tier)
        if hits.size == 0:
            continue
        pair = model.pair(0, int(hits[0]))
        rows.append({"tier": tier.label, "a": pair.a, "b": pair.b, "hops": pair.hops,
                     "latency_us": pair.latency_us, "bandwidth_gb_per_s": pair.bandwidth_gb_per_s,
                     "transfer_ms": pair.transfer_time_s(KV_BYTES) * 1e3})
    return rows
