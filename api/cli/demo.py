"""``toposched demo``: the main job on the embedded example cluster, nothing to install."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from api.cli.output import print_json
from topology.build import build_fabric
from topology.distance import DistanceModel
from topology.documents import packaged_config
from topology.inventory import load_inventory
from topology.summary import render_text, summarize
from topology.tiers import Tier

KV_BYTES = 2_684_354_560  # an 8K-token Llama-3-70B prompt in fp16 (320 KiB/token)


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser("demo", help="build the example cluster and show what it costs")
    p.add_argument("--inventory", help="use this inventory instead of the embedded example")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Build the example fabric and print its summary and one KV transfer per tier."""
    path = args.inventory or packaged_config("clusters/example.yaml")
    spec = build_fabric(load_inventory(path))
    model = DistanceModel(spec)
    rows = tier_examples(model)
    if args.json:
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
