"""``toposched topo …``: parse captures, build, query, show, collect and synthesise fabrics."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from api.cli.output import print_json
from topology.build import Captures, build_fabric
from topology.detect import FORMATS, detect_format
from topology.distance import DistanceModel
from topology.draw import to_dot, to_svg
from topology.errors import InputError, Location, ParseError, ToposchedError
from topology.inventory import load_inventory
from topology.source import read_capture
from topology.spec import load_fabric
from topology.summary import render_text, summarize
from topology.synth import SynthParams, synth_cluster
from topology.writers import write_captures


def register(subparsers: Any) -> None:
    """Add the ``topo`` command group."""
    topo = subparsers.add_parser("topo", help="fabric topology: parse, build, query, draw")
    sub = topo.add_subparsers(dest="topo_command", metavar="SUBCOMMAND", required=True)
    _register_parse(sub)
    _register_build(sub)
    _register_distance(sub)
    _register_show(sub)
    _register_collect(sub)
    _register_synth(sub)


# -- parse --------------------------------------------------------------------------------
def _register_parse(sub: Any) -> None:
    p = sub.add_parser("parse", help="parse one capture (format detected unless given)")
    p.add_argument("file", help="capture file, or - for standard input")
    p.add_argument("--format", choices=FORMATS, help="input format (default: detect)")
    p.add_argument("--host", help="host name to record with the capture")
    p.add_argument("--json", action="store_true", help="print the parse as JSON")
    p.set_defaults(handler=cmd_parse)


def cmd_parse(args: argparse.Namespace) -> int:
    """Parse one capture and print it."""
    text, source = _read_input(args.file)
    fmt = args.format or detect_format(text, source)
    result = _parse_as(fmt, text, source)
    if args.json:
        data = result.model_dump(mode="json")
        variant = data.pop("format", None)  # e.g. LLDP's json0 / json / keyvalue
        print_json({"format": fmt, **({"variant": variant} if variant else {}),
                    "host": args.host, **data})
    else:
        print(_describe(fmt, result, args.host))
    return 0


def _read_input(name: str) -> tuple[str, str]:
    if name == "-":
        from topology.source import decode_capture
        return decode_capture(sys.stdin.buffer.read(), "<stdin>"), "<stdin>"
    return read_capture(name), name


#: Format → (module, parser); imported on use so that ``topo`` starts fast.
_PARSERS = {"nvidia-smi": ("topology.nvsmi", "parse_nvidia_smi"),
            "lldp": ("topology.lldp", "parse_lldp"),
            "nccl-xml": ("topology.nccl", "parse_nccl_xml"),
            "k8s-nodes": ("topology.k8s", "parse_k8s_nodes"),
            "ibnetdiscover": ("topology.ibnetdiscover", "parse_ibnetdiscover"),
            "iblinkinfo": ("topology.iblinkinfo", "parse_iblinkinfo"),
            "rdma-devices": ("topology.rdma_devices", "parse_rdma_devices"),
            "aws-topology": ("topology.aws_topology", "parse_aws_topology")}


def _parse_as(fmt: str, text: str, source: str) -> Any:
    if fmt in _PARSERS:
        module, name = _PARSERS[fmt]
        return getattr(importlib.import_module(module), name)(text, source)
    from topology.documents import parse_yaml, validate
    from topology.inventory import Inventory
    return validate(Inventory, parse_yaml(text, source), source)


def _describe(fmt: str, result: Any, host: str | None) -> str:
    prefix = f"{host}: " if host else ""
    counts = {key: len(value) for key, value in result.model_dump().items()
              if isinstance(value, list | tuple)}
    return f"{prefix}{fmt}: " + ", ".join(f"{n} {k}" for k, n in counts.items())


# -- build --------------------------------------------------------------------------------
def _register_build(sub: Any) -> None:
    p = sub.add_parser("build", help="build fabric.json from an inventory and captures")
    p.add_argument("--inventory", help="inventory YAML (optional: without it the hosts and "
                   "their places come from the captures and node labels)")
    for kind, what in (("nvsmi", "nvidia-smi topo -m"), ("lldp", "lldpctl"),
                       ("nccl", "NCCL topology XML"),
                       ("rdma", "RDMA devices (topo collect, rdma link, ibdev2netdev, ibstat)")):
        p.add_argument(f"--{kind}", action="append", default=[], metavar="HOST=FILE",
                       help=f"{what} capture for a host (repeatable)")
    p.add_argument("--k8s-nodes", help="`kubectl get nodes -o json` output")
    p.add_argument("--ibnetdiscover", action="append", default=[], metavar="FILE",
                   help="ibnetdiscover (or -p) output of a subnet (repeatable; iblinkinfo "
                   "output is detected and read too)")
    p.add_argument("--iblinkinfo", action="append", dest="ibnetdiscover", metavar="FILE",
                   help="iblinkinfo (or -l) output of a subnet (repeatable; same list as "
                   "--ibnetdiscover, the form is detected)")
    p.add_argument("--aws-topology", action="append", default=[], metavar="FILE",
                   help="`aws ec2 describe-instance-topology` output (repeatable)")
    p.add_argument("--template", help="host template for hosts without a capture "
                   "(builds without an inventory)")
    p.add_argument("--keep-going", action="store_true",
                   help="record conflicts in the fabric instead of failing")
    p.add_argument("-o", "--output", default="fabric.json", help="where to write the fabric")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    """Build and save a fabric."""
    captures = Captures(nvsmi=_host_files(args.nvsmi, "--nvsmi"),
                        lldp=_host_files(args.lldp, "--lldp"),
                        nccl=_host_files(args.nccl, "--nccl"),
                        rdma=_host_files(args.rdma, "--rdma"),
                        k8s_nodes=Path(args.k8s_nodes) if args.k8s_nodes else None,
                        ibnetdiscover=[Path(p) for p in args.ibnetdiscover],
                        aws_topology=[Path(p) for p in args.aws_topology],
                        template=args.template)
    inventory = load_inventory(args.inventory) if args.inventory else None
    spec = build_fabric(inventory, captures, keep_going=args.keep_going)
    spec.save(args.output)
    summary = summarize(spec)
    if args.json:
        print_json({"output": args.output, **summary.model_dump(mode="json")})
    else:
        print(render_text(summary))
        print(f"wrote {args.output}")
    return 0


def _host_files(values: list[str], flag: str) -> dict[str, Path]:
    result: dict[str, Path] = {}
    for value in values:
        host, sep, path = value.partition("=")
        if not sep or not host or not path:
            raise InputError(f"{flag} {value!r}: expected HOST=FILE")
        if host in result:
            raise InputError(f"{flag} names host {host} twice ({result[host]} and {path}); "
                             "give one capture per host")
        result[host] = Path(path)
    return result


# -- distance -------------------------------------------------------------------------------
def _register_distance(sub: Any) -> None:
    p = sub.add_parser("distance", help="tier, hops, latency, bandwidth between two GPUs")
    p.add_argument("fabric", help="fabric.json")
    p.add_argument("gpu_a", help="HOST/gpuN")
    p.add_argument("gpu_b", help="HOST/gpuN")
    p.add_argument("--bytes", type=_byte_count, default=None,
                   help="also estimate the transfer time of N bytes (suffixes K, M, G)")
    p.add_argument("--no-nvlink-across-processes", action="store_true",
                   help="NVLink cannot carry KV between the two processes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_distance)


def _byte_count(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("byte count must be ≥ 0")
    return value


def cmd_distance(args: argparse.Namespace) -> int:
    """Print the cost of moving bytes between two GPUs."""
    model = DistanceModel(load_fabric(args.fabric),
                          False if args.no_nvlink_across_processes else None)
    pair = model.pair(args.gpu_a, args.gpu_b)
    result: dict[str, Any] = {
        "a": pair.a, "b": pair.b, "tier": pair.tier.label, "tier_code": int(pair.tier),
        "hops": pair.hops, "latency_us": round(pair.latency_us, 3),
        "bandwidth_gb_per_s": round(pair.bandwidth_gb_per_s, 3),
        "path_links": list(model.path_links(pair.a, pair.b))}
    if args.bytes is not None:
        result["bytes"] = args.bytes
        result["transfer_time_ms"] = round(pair.transfer_time_s(args.bytes) * 1e3, 6)
    if args.json:
        print_json(result)
    else:
        print(f"{pair.a} -> {pair.b}: {pair.tier.label}, {pair.hops} hops, "
              f"{pair.latency_us:.1f} µs, {pair.bandwidth_gb_per_s:.1f} GB/s"
              + (f", {result['transfer_time_ms']:.3f} ms for {args.bytes} bytes"
                 if args.bytes is not None else ""))
    return 0


# -- show -------------------------------------------------------------------------------------
def _register_show(sub: Any) -> None:
    p = sub.add_parser("show", help="summary of a fabric; --dot / --svg to draw it")
    p.add_argument("fabric", help="fabric.json")
    p.add_argument("--dot", metavar="FILE", help="write Graphviz DOT (- for stdout)")
    p.add_argument("--svg", metavar="FILE", help="write an SVG drawing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    """Summarise (and optionally draw) a fabric."""
    spec = load_fabric(args.fabric)
    if args.dot == "-":
        sys.stdout.write(to_dot(spec))
        return 0
    if args.dot:
        Path(args.dot).write_text(to_dot(spec))
    if args.svg:
        Path(args.svg).write_text(to_svg(spec))
    summary = summarize(spec)
    if args.json:
        print_json(summary)
    else:
        print(render_text(summary))
    return 0


# -- collect ------------------------------------------------------------------------------------
#: Captures taken by running a tool: name → command.
_COLLECTORS = {"nvidia-smi": ["nvidia-smi", "topo", "-m"], "lldp": ["lldpctl", "-f", "json0"],
               "ibnetdiscover": ["ibnetdiscover"]}
#: Where each capture is written with --out-dir.
_COLLECTED_FILES = {"nvidia-smi": "nvidia-smi.txt", "lldp": "lldp.txt",
                    "rdma-devices": "rdma-devices.json", "ibnetdiscover": "ibnetdiscover.txt"}


def _register_collect(sub: Any) -> None:
    p = sub.add_parser("collect", help="capture this host: nvidia-smi topo -m, lldpctl, RDMA "
                       "devices (sysfs) and ibnetdiscover")
    p.add_argument("--out-dir", help="write each capture to a file here instead of stdout")
    p.add_argument("--post", metavar="URL",
                   help="also PUT the captures to a scheduler (e.g. http://sched:8000)")
    p.add_argument("--host", default=None, help="host name to post as (default: this host's)")
    p.add_argument("--sysfs-root", default=None, metavar="DIR",
                   help="where /sys/class/infiniband is (a container with the host's /sys "
                   "mounted elsewhere)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_collect)


def cmd_collect(args: argparse.Namespace) -> int:
    """Collect this host's captures; a missing tool is reported, not fatal to the others."""
    from topology.rdma_sysfs import SYSFS_ROOT

    results: dict[str, dict[str, Any]] = {}
    for name in _COLLECTED_FILES:
        results[name] = _rdma_devices(Path(args.sysfs_root or SYSFS_ROOT)) \
            if name == "rdma-devices" else _run_collector(_COLLECTORS[name])
    if args.post:
        _post(args, results)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, result in results.items():
            if result["ok"]:
                path = out / _COLLECTED_FILES[name]
                path.write_text(result["output"])
                result["file"] = str(path)
    if args.json:
        print_json(results)
    else:
        for name, result in results.items():
            status = "ok" if result["ok"] else f"unavailable: {result['error']}"
            print(f"== {name}: {status}")
            if result["ok"] and not args.out_dir:
                print(result["output"])
    return 0 if any(r["ok"] for r in results.values()) else 1


def _rdma_devices(root: Path) -> dict[str, Any]:
    """The RDMA device map read from sysfs (no tool needed)."""
    from topology.rdma_sysfs import rdma_devices_text

    text = rdma_devices_text(root)
    if text is None:
        return {"ok": False, "error": f"no RDMA device under {root}", "output": ""}
    return {"ok": True, "error": None, "output": text}


def _post(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    """PUT the captures to the scheduler; the token comes from the environment only."""
    import httpx

    from api.collect_client import post_captures

    token = os.environ.get("TOPOSCHED_OPERATOR_TOKEN")
    try:
        answers = post_captures(args.post, args.host or socket.gethostname(), results, token)
    except httpx.HTTPError as exc:
        raise ToposchedError(f"cannot post the captures to {args.post}: {exc}") from exc
    for name, answer in answers.items():
        results[name]["posted"] = answer["status"]


def _run_collector(command: list[str]) -> dict[str, Any]:
    if shutil.which(command[0]) is None:
        return {"ok": False, "error": f"{command[0]} is not installed or not on PATH",
                "output": ""}
    try:  # ibnetdiscover walks a whole subnet: allow it a while
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ok": False, "error": str(exc), "output": ""}
    if done.returncode != 0:
        return {"ok": False, "error": (done.stderr or done.stdout).strip()[:500],
                "output": ""}
    return {"ok": True, "error": None, "output": done.stdout}


# -- synth --------------------------------------------------------------------------------------
def _register_synth(sub: Any) -> None:
    p = sub.add_parser("synth", help="generate a synthetic cluster")
    defaults = SynthParams()
    for field in ("zones", "pods_per_zone", "racks_per_pod", "hosts_per_rack"):
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    p.add_argument("--template", default=defaults.template, help="host template name")
    p.add_argument("--no-rails", action="store_true", help="one ToR leaf per rack")
    for field in ("leaf_oversubscription", "pod_oversubscription", "zone_oversubscription"):
        p.add_argument(f"--{field.replace('_', '-')}", type=float,
                       default=getattr(defaults, field))
    p.add_argument("--nvlink-domain-per-rack", action="store_true",
                   help="each rack is one multi-host NVLink domain (NVL72-style)")
    p.add_argument("--name", default=defaults.name)
    p.add_argument("-o", "--output", default="fabric.json")
    p.add_argument("--captures", metavar="DIR",
                   help="also write an inventory and per-host captures to DIR")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """Generate a synthetic fabric (and optionally its captures)."""
    for field in ("zones", "pods_per_zone", "racks_per_pod", "hosts_per_rack"):
        if getattr(args, field) < 1:
            raise InputError(f"--{field.replace('_', '-')} must be at least 1")
    params = SynthParams(
        zones=args.zones, pods_per_zone=args.pods_per_zone, racks_per_pod=args.racks_per_pod,
        hosts_per_rack=args.hosts_per_rack, template=args.template, rails=not args.no_rails,
        leaf_oversubscription=args.leaf_oversubscription,
        pod_oversubscription=args.pod_oversubscription,
        zone_oversubscription=args.zone_oversubscription,
        nvlink_domain_per_rack=args.nvlink_domain_per_rack, name=args.name)
    _check_ratios(params)
    spec = synth_cluster(params)
    spec.save(args.output)
    inventory = write_captures(spec, args.captures) if args.captures else None
    summary = summarize(spec)
    if args.json:
        print_json({"output": args.output, "inventory": str(inventory) if inventory else None,
                    **summary.model_dump(mode="json")})
    else:
        print(render_text(summary))
        print(f"wrote {args.output}" + (f" and {inventory}" if inventory else ""))
    return 0


def _check_ratios(params: SynthParams) -> None:
    for name in ("leaf_oversubscription", "pod_oversubscription", "zone_oversubscription"):
        if getattr(params, name) <= 0:
            raise ParseError(f"--{name.replace('_', '-')} must be > 0", Location("<args>"))
