"""``toposched place``: place prefill and decode instances on a fabric for a workload."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from api.cli.output import print_json
from scheduler.capacity import load_workload
from scheduler.models_config import load_models
from scheduler.placement import (
    FailureRule,
    Placement,
    PlacementRequest,
    RoleRule,
    SolverOptions,
    place,
)
from scheduler.placement.request import Progress
from scheduler.placement.result import Role
from topology.documents import load_document
from topology.errors import InputError
from topology.spec import load_fabric

_ROLES = ("prefill", "decode")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``place`` command."""
    p = subparsers.add_parser(
        "place", help="place prefill/decode instances on a fabric (CP-SAT)",
        description="Choose the GPUs of every prefill and decode instance and pair them so "
                    "the expected KV transfer cost is lowest (then churn, then imbalance).")
    p.add_argument("--fabric", required=True, metavar="FILE", help="fabric.json")
    p.add_argument("--workload", required=True, metavar="FILE", help="workload YAML/JSON")
    p.add_argument("--model", default=None, help="model name (default: the workload's)")
    p.add_argument("--tp-prefill", type=int, default=4, metavar="N", help="prefill TP size")
    p.add_argument("--tp-decode", type=int, default=4, metavar="N", help="decode TP size")
    p.add_argument("--prefill", type=int, default=None, metavar="N",
                   help="prefill instances (default: capacity sizing)")
    p.add_argument("--decode", type=int, default=None, metavar="N",
                   help="decode instances (default: capacity sizing)")
    p.add_argument("--gpu-type", default=None, help="GPU type for sizing (default: fabric's)")
    p.add_argument("--current", metavar="FILE", help="placement in force (minimise churn)")
    p.add_argument("--exclude", action="append", default=[], metavar="NAME",
                   help="drained/failed GPU, host, rack, pod or zone (repeatable)")
    p.add_argument("--pin", action="append", default=[], metavar="TARGET=ROLE",
                   help="every GPU of TARGET serves ROLE (repeatable)")
    p.add_argument("--forbid", action="append", default=[], metavar="TARGET=ROLE",
                   help="TARGET never serves ROLE (repeatable)")
    p.add_argument("--zone-independent", action="store_true",
                   help="each zone holds enough capacity to serve the workload alone")
    p.add_argument("--max-rack-share", type=float, default=None, metavar="PCT",
                   help="no rack holds more than PCT %% of either role")
    p.add_argument("--time-limit", type=float, default=10.0, metavar="S",
                   help="solver time limit in seconds (default 10)")
    p.add_argument("--seed", type=int, default=0, help="solver random seed")
    p.add_argument("--workers", type=int, default=2, help="solver worker threads")
    p.add_argument("-o", "--output", metavar="FILE", help="write the placement JSON here")
    p.add_argument("--json", action="store_true", help="print the placement JSON")
    p.set_defaults(handler=handle_place)


def handle_place(args: argparse.Namespace) -> int:
    """Run ``toposched place`` (the entry point maps bad input and unknown names to 2)."""
    request = build_request(args)
    with _progress(enabled=not args.json) as progress:
        placement = place(request, progress=progress)
    if args.output:
        Path(args.output).write_text(placement.model_dump_json(indent=1) + "\n",
                                     encoding="utf-8")
    if args.json:
        print_json(placement)
    else:
        print(render(placement))
    return 0


def build_request(args: argparse.Namespace) -> PlacementRequest:
    """The request the arguments describe (files loaded, names checked)."""
    workload = load_workload(args.workload)
    if args.model:
        workload = workload.model_copy(update={"model": args.model})
    model = load_models().get(workload.model)
    current = load_document(Placement, args.current) if args.current else None
    share = args.max_rack_share
    if share is not None and not 0 < share <= 100:
        raise InputError(f"--max-rack-share must be in (0, 100], got {share}")
    return PlacementRequest(
        fabric=load_fabric(args.fabric), workload=workload, model=model,
        tp_prefill=args.tp_prefill, tp_decode=args.tp_decode, gpu_type=args.gpu_type,
        prefill=args.prefill, decode=args.decode, exclude=tuple(args.exclude),
        rules=tuple(_rules(args.pin, "pin") + _rules(args.forbid, "forbid")),
        failure=FailureRule(zone_independent=args.zone_independent,
                            max_rack_share=share / 100 if share is not None else None),
        current=current,
        options=SolverOptions(time_limit_s=args.time_limit, seed=args.seed,
                              workers=args.workers))


def _rules(values: list[str], kind: Any) -> list[RoleRule]:
    rules = []
    for value in values:
        target, _, role = value.rpartition("=")
        if not target or role not in _ROLES:
            raise InputError(f"--{kind} {value!r}: expected TARGET=prefill or TARGET=decode")
        rules.append(RoleRule(target=target, role=_role(role), kind=kind))
    return rules


def _role(text: str) -> Role:
    return "prefill" if text == "prefill" else "decode"


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    """A status line on stderr that shows each improving solution (terminals only)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield None
        return
    with console.status("placing: preparing the instance…") as status:
        yield lambda message: status.update(f"placing: {message}")


def render(placement: Placement) -> str:
    """A short human summary of a placement."""
    o, t = placement.objective, placement.traffic
    lines = [
        f"{placement.model} on {placement.fabric}: {len(placement.by_role('prefill'))} "
        f"prefill (TP {placement.tp_prefill}) + {len(placement.by_role('decode'))} decode "
        f"(TP {placement.tp_decode}) instances",
        f"  method {placement.method}, {placement.status}, {placement.solve_time_s:.2f} s",
        f"  expected KV transfer {o.transfer_cost_ms:.3f} ms/request; lower bound "
        f"{placement.lower_bound_ms:.3f} ms ({placement.gap:.3f}x)",
        f"  KV traffic inside an NVLink domain {t.nvlink_domain:.1%}, a rack {t.rack:.1%}, "
        f"a pod {t.pod:.1%}, a zone {t.zone:.1%}",
        f"  churn {o.churn}, rack imbalance {o.imbalance}"
        + (f", moved {placement.moved}" if placement.moved is not None else ""),
    ]
    if placement.busiest_links:
        top = placement.busiest_links[0]
        lines.append(f"  busiest link {top.link}: {top.gb_per_s:,.1f} of "
                     f"{top.capacity_gb_per_s:,.1f} GB/s")
    return "\n".join(lines)
