"""Benchmark: what topology-awareness buys, measured with the cluster simulator.

Run: ``.venv/bin/python bench/sim_bench.py [--quick] [--out bench/results]``

Writes ``simulation.json`` / ``simulation.md`` under ``--out`` and PNGs under
``--out/sim/``. Sections:

1. Speed: the full 12,031-request Mooncake conversation trace on the 64-instance
   three-level cluster (wall-clock seconds of the run loop; placement excluded).
2. Comparisons on the three-level cluster (2 zones, racks with 4:1 uplinks, 8-GPU
   hosts) and on a thinner variant, for the Mooncake conversation trace, the
   Mooncake synthetic trace and the agentic workload: toposched's default (solver
   placement + fabric-cost routing) against topology-unaware disaggregation and the
   baselines, and an aggregated setup on the same GPUs.
3. Sanity: an infinitely fast fabric (aware and unaware converge) and a trace with
   no shared prefixes (prefix affinity brings nothing).
4. Validation of the transfer model against the analytic formula and the router's
   contention estimate; against real NIXL transfers when
   ``bench/results/transfers.json`` exists.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.snapshot import CycleContext, RequestView, Role, Snapshot, Worker  # noqa: E402
from scheduler.router.cost import FabricCostModel, PairTable  # noqa: E402
from scheduler.router.snapshot import domain_arrays  # noqa: E402
from sim.adapters import PlacementOutcome  # noqa: E402
from sim.clock import EventQueue  # noqa: E402
from sim.network import Network  # noqa: E402
from sim.report import RunRecord, SimReport, draw_sweep, write_report  # noqa: E402
from sim.scenarios import cluster, workload  # noqa: E402
from sim.simulator import SimConfig, Simulation  # noqa: E402
from topology.distance import DistanceModel  # noqa: E402
from topology.spec import FabricSpec  # noqa: E402

KV_BYTES_PER_TOKEN = 327_680  # Llama-3-70B bf16


@dataclass(frozen=True)
class Variant:
    """One row of a comparison: a label and the SimConfig fields it sets."""

    label: str
    fields: dict[str, Any]


VARIANTS = (
    Variant("toposched default: fabric-cost / solver", {}),
    Variant("fabric-cost / unaware placement", {"placement": "unaware"}),
    Variant("topology-unaware disaggregation (fabric-blind fabric-cost / unaware)",
            {"placement": "unaware", "blind_fabric": True}),
    Variant("random / unaware", {"policy": "random", "placement": "unaware"}),
    Variant("round-robin / unaware", {"policy": "round-robin", "placement": "unaware"}),
    Variant("least-loaded / unaware", {"policy": "least-loaded", "placement": "unaware"}),
    Variant("prefix-only (SGLang-style) / unaware",
            {"policy": "prefix-only", "placement": "unaware"}),
    Variant("label-curve (llm-d-style) / solver", {"policy": "label-curve"}),
    Variant("single-domain (Dynamo-style) / solver", {"policy": "single-domain"}),
    Variant("aggregated fabric-cost, same GPUs", {"aggregated": True}),
)


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[sim_bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """Runs variants, caching fabrics and placements per cluster."""

    def __init__(self) -> None:
        self.fabrics: dict[str, tuple[FabricSpec, DistanceModel]] = {}
        self.placements: dict[tuple[str, str, str], PlacementOutcome] = {}
        self.records: list[RunRecord] = []

    def fabric(self, name: str) -> tuple[FabricSpec, DistanceModel]:
        if name not in self.fabrics:
            fabric = cluster(name).fabric()
            self.fabrics[name] = (fabric, DistanceModel(fabric))
        return self.fabrics[name]

    def run(self, cluster_name: str, spec: str, variant: Variant, *, seed: int = 0,
            keep: bool = True) -> RunRecord:
        scenario = cluster(cluster_name)
        fabric, distance = self.fabric(cluster_name)
        trace = workload(spec, seed)
        config = SimConfig(tp=scenario.tp, prefill=scenario.prefill, decode=scenario.decode,
                           seed=seed, **variant.fields)
        key = (cluster_name, spec, config.placement)
        sim = Simulation(fabric, trace, config, distance=distance,
                         placement=self.placements.get(key))
        if key not in self.placements and not config.aggregated:
            self.placements[key] = sim.placement
        summary = sim.run()
        log(f"{cluster_name} {spec} {variant.label}: {summary.completed} done in "
            f"{summary.wall_s:.1f} s, goodput {summary.goodput_rps:.2f}, "
            f"TTFT p99 {summary.ttft.p99:.2f} s")
        record = RunRecord(label=variant.label, cluster=cluster_name, workload=spec,
                           policy=config.policy, placement=config.placement,
                           aggregated=config.aggregated, infinite_fabric=config.infinite_fabric,
                           seed=seed, summary=summary)
        if keep:
            self.records.append(record)
        return record


# -- validation ---------------------------------------------------------------------------


def _instance(distance: DistanceModel, host: int, half: int = 0) -> tuple[str, ...]:
    return tuple(distance.names[host * 8 + half * 4 + i] for i in range(4))


def _representatives(distance: DistanceModel) -> list[tuple[str, tuple[str, ...],
                                                             tuple[str, ...]]]:
    """(name, src, dst) instance pairs, one per tier reachable from host 0."""
    out, seen = [], set()
    src = _instance(distance, 0)
    candidates = [_instance(distance, 0, 1)] + [
        _instance(distance, h) for h in range(1, len(distance.names) // 8)]
    for dst in candidates:
        tier = distance.tier(src[0], dst[0])
        if tier not in seen:
            seen.add(tier)
            out.append((tier.label, src, dst))
    return out


def _sim_time(distance: DistanceModel, src: Sequence[str], dst: Sequence[str], nbytes: float,
              concurrent: int) -> float:
    return _sim_many(distance, [(src, dst)] * concurrent, nbytes)


def _sim_many(distance: DistanceModel, pairs: Sequence[tuple[Sequence[str], Sequence[str]]],
              nbytes: float) -> float:
    """When the last of the transfers (all started at once) has arrived."""
    queue = EventQueue()
    net = Network(distance, queue)
    for i, (src, dst) in enumerate(pairs):
        net.start(net.routes.route(src, dst), nbytes, i)
    last = 0.0
    while (event := queue.pop()) is not None:
        _, (flow, version) = event
        if net.finish(flow, version):
            last = queue.now() + net.arrival_delay(flow)
    return last


def _in_flight(distance: DistanceModel,
               pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> dict[str, int]:
    """Transfers per link with ``pairs`` in flight, as the simulator shows the router."""
    net = Network(distance, EventQueue())
    for i, (src, dst) in enumerate(pairs):
        net.start(net.routes.route(src, dst), 1e9, i)
    return dict(net.link_load)


def _router_estimate(distance: DistanceModel, src: tuple[str, ...], dst: tuple[str, ...],
                     tokens: int, load: dict[str, int]) -> float:
    """The router's own transfer estimate (scheduler.router.cost) with ``load``
    transfers in flight per link."""
    workers = (Worker("p", Role.PREFILL, src), Worker("d", Role.DECODE, dst,
                                                      free_kv_blocks=1 << 30))
    snap = Snapshot(workers, domain_arrays(distance, workers), {}, load, 512,
                    KV_BYTES_PER_TOKEN)
    blocks = -(-tokens // 512)
    view = RequestView("v", tuple(range(blocks)), tokens)
    model = FabricCostModel(PairTable(distance, workers))
    ctx = CycleContext(view, snap, np.zeros(2, dtype=np.int64), model)
    return model.terms(ctx, 0, 1, local=False).transfer_s


def validate(distance: DistanceModel) -> tuple[list[dict[str, Any]], str]:
    """Simulated transfer times against the analytic formula and the router's estimate."""
    rows = []
    for tier, src, dst in _representatives(distance):
        route = Network(distance, EventQueue()).routes.route(src, dst)
        for tokens in (512, 4096, 16384, 65536):
            nbytes = tokens * KV_BYTES_PER_TOKEN
            alone = _sim_time(distance, src, dst, nbytes, 1)
            four = _sim_time(distance, src, dst, nbytes, 4)
            analytic = route.analytic_s(nbytes)
            router_alone = _router_estimate(distance, src, dst, tokens, {})
            router_four = _router_estimate(distance, src, dst, tokens,
                                           _in_flight(distance, [(src, dst)] * 3))
            rows.append({"tier": tier, "tokens": tokens, "bytes": nbytes, "sim_alone_s": alone,
                         "analytic_s": analytic, "router_alone_s": router_alone,
                         "sim_4_concurrent_s": four, "router_4th_in_flight_s": router_four})
    rows += _shared_uplink_rows(distance)
    return rows, _validation_text(rows)


def _shared_uplink_rows(distance: DistanceModel) -> list[dict[str, Any]]:
    """Four transfers from four hosts of zone 0 to four hosts of zone 1: separate NICs,
    one shared zone uplink."""
    hosts = len(distance.names) // 8
    pairs = [(_instance(distance, h), _instance(distance, hosts // 2 + h)) for h in range(4)]
    src, dst = pairs[0]
    rows = []
    for tokens in (4096, 16384, 65536):
        nbytes = tokens * KV_BYTES_PER_TOKEN
        rows.append({"tier": "cross_zone, 4 hosts → 4 hosts", "tokens": tokens,
                     "bytes": nbytes, "sim_alone_s": _sim_many(distance, pairs[:1], nbytes),
                     "analytic_s": Network(distance, EventQueue()).routes.route(
                         src, dst).analytic_s(nbytes),
                     "router_alone_s": _router_estimate(distance, src, dst, tokens, {}),
                     "sim_4_concurrent_s": _sim_many(distance, pairs, nbytes),
                     "router_4th_in_flight_s": _router_estimate(
                         distance, src, dst, tokens, _in_flight(distance, pairs[1:]))})
    return rows


def _err(a: float, b: float) -> str:
    return f"{(a - b) / b:+.1%}" if b > 0 else "n/a"


def _validation_text(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "Single transfers of a TP4 instance's KV (4 lanes, one per rank/NIC) between a "
        "representative pair of each tier, against the analytic formula "
        "`latency + bytes / (lanes × pair bandwidth)` and the router's own estimate "
        "(`scheduler.router.cost`); then four identical transfers at once, against the "
        "router's estimate for the fourth with three already in flight "
        "(`capacity / (in flight + 1)` on each link).", "",
        "| tier | tokens | sim alone (ms) | analytic (ms) | error | router (ms) | "
        "sim 4 at once (ms) | router, 3 in flight (ms) | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['tier']} | {r['tokens']:,} | {r['sim_alone_s'] * 1e3:.2f} | "
            f"{r['analytic_s'] * 1e3:.2f} | {_err(r['sim_alone_s'], r['analytic_s'])} | "
            f"{r['router_alone_s'] * 1e3:.2f} | {r['sim_4_concurrent_s'] * 1e3:.2f} | "
            f"{r['router_4th_in_flight_s'] * 1e3:.2f} | "
            f"{_err(r['router_4th_in_flight_s'], r['sim_4_concurrent_s'])} |")
    lines += ["", "Alone, the simulator, the analytic formula and the router agree exactly (the "
              "same formula over the same `DistanceModel` figures: no transfer is slowed by an "
              "uplink here, as each uplink carries at least one instance's four NICs). With "
              "identical transfers sharing the same NICs the router's `capacity / (in flight + "
              "1)` also matches max-min sharing. The last rows are where it does not: four "
              "transfers from four different hosts share only the zone uplink; each TP4 "
              "transfer puts four lanes on it, but the router counts transfers per link and "
              "gives *each lane* `capacity / (in flight + 1)`, so it prices the fourth "
              "transfer as if it were alone (about 70–75 % too fast). Counting lanes on "
              "shared uplinks (`capacity / ((in flight + 1) × lanes)` per lane) would fix "
              "it; that is the router's code, reported here rather than changed."]
    return "\n".join(lines)


def nixl_section(path: Path) -> tuple[str, Any]:
    """The transfer model's shape (fixed latency + bytes / bandwidth) fitted to the real
    NIXL transfers of ``bench/results/transfers.json``, or why that is pending."""
    if not path.is_file():
        return ("**Pending**: `bench/results/transfers.json` (real NIXL transfers measured by "
                "the transfers benchmark) did not exist when this report was produced; only "
                "the analytic comparison above is available.", None)
    data = json.loads(path.read_text())
    points = _nixl_points(data)
    if len(points) < 2:
        return (f"`{path.name}` holds fewer than two usable measurements.", data)
    latency, bandwidth = _fit(points)
    rows = ["| size | measured (ms) | model (ms) | error |", "| --- | --- | --- | --- |"]
    fitted = []
    for size, seconds in points:
        model = latency + size / bandwidth
        fitted.append({"bytes": size, "measured_s": seconds, "model_s": model})
        rows.append(f"| {_size(size)} | {seconds * 1e3:.3f} | {model * 1e3:.3f} | "
                    f"{_err(model, seconds)} |")
    errors = [abs(f["model_s"] - f["measured_s"]) / f["measured_s"] for f in fitted]
    env = data.get("environment", {})
    text = (f"`{path.name}` measures the sidecar's NIXL transfers on this CPU machine "
            f"(DRAM, two processes on loopback, UCX; {env.get('cpus', '?')} shared CPUs). "
            "That is not a fabric tier the simulator models, so the comparison checks the "
            "*shape* of the simulator's transfer model — a fixed latency plus bytes over a "
            "bandwidth, per lane — by fitting its two parameters to the measurements "
            "(least squares on relative error): fitted latency "
            f"**{latency * 1e6:.0f} µs**, bandwidth **{bandwidth / 1e9:.2f} GB/s**. Mean "
            f"absolute error {sum(errors) / len(errors):.0%}, worst {max(errors):.0%}. "
            "The loopback measurements are noisy (throughput is not monotonic in size on a "
            "shared 2-CPU machine), which bounds what this check can show; a GPU host with "
            "NVLink / RDMA NICs is needed to validate the tier figures themselves.\n\n"
            + "\n".join(rows))
    return text, {"measurements": data, "fit": {"latency_s": latency,
                                                "bandwidth_bytes_per_s": bandwidth},
                  "points": fitted}


def _nixl_points(data: dict[str, Any]) -> list[tuple[float, float]]:
    """(bytes, seconds) of the sidecar's NIXL transfers, small and contiguous."""
    points = []
    for row in data.get("small", []):
        small = {"4KiB": 4096, "64KiB": 65536}.get(str(row.get("size")))
        if small and row.get("sidecar_nixl_us_p50"):
            points.append((float(small), float(row["sidecar_nixl_us_p50"]) * 1e-6))
    for row in data.get("throughput", []):
        if row.get("sidecar_nixl_gbps") and row.get("size_mib"):
            size = float(row["size_mib"]) * 2**20
            points.append((size, size / (float(row["sidecar_nixl_gbps"]) * 1e9)))
    return sorted(points)


def _fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of ``t = L + s / B`` weighted by 1/t (relative error)."""
    a = np.array([[1.0 / t, s / t] for s, t in points])
    b = np.ones(len(points))
    (latency, inverse_bw), *_ = np.linalg.lstsq(a, b, rcond=None)
    return max(float(latency), 0.0), 1.0 / max(float(inverse_bw), 1e-18)


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**20:g} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:g} KiB"


# -- the report -----------------------------------------------------------------------------


def _find(records: Sequence[RunRecord], cluster_name: str, spec: str, label: str) -> RunRecord:
    return next(r for r in records
                if r.cluster == cluster_name and r.workload == spec and r.label == label)


def findings(records: Sequence[RunRecord], groups: Sequence[tuple[str, str]]) -> str:
    """Headline ratios per (cluster, workload): default against the unaware setups."""
    lines = ["| cluster · workload | default goodput | vs topology-unaware disagg. | "
             "vs best baseline | default TTFT p99 (s) | unaware TTFT p99 (s) | "
             "cross-zone bytes default / unaware |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for cluster_name, spec in groups:
        default = _find(records, cluster_name, spec, VARIANTS[0].label)
        unaware = _find(records, cluster_name, spec, VARIANTS[2].label)
        base = [r for r in records if r.cluster == cluster_name and r.workload == spec
                and r.label not in (VARIANTS[0].label, VARIANTS[1].label)]
        best = max(base, key=lambda r: r.summary.goodput_rps)
        d, u = default.summary, unaware.summary
        lines.append(
            f"| {cluster_name} · {spec} | {d.goodput_rps:.2f} req/s | "
            f"{_ratio(d.goodput_rps, u.goodput_rps)} | "
            f"{_ratio(d.goodput_rps, best.summary.goodput_rps)} ({best.label}) | "
            f"{d.ttft.p99:.2f} | {u.ttft.p99:.2f} | "
            f"{_cross_zone(d) / 1e12:.2f} / {_cross_zone(u) / 1e12:.2f} TB |")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 0 else "∞"


def _cross_zone(summary: Any) -> int:
    return sum(t.bytes for t in summary.transfers if t.tier == "cross_zone")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--quick", action="store_true", help="small traces (smoke run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    bench = Bench()
    limit = ",limit=600" if args.quick else ""
    conv = f"mooncake-conversation:scale=8{limit}"
    thin_conv = f"mooncake-conversation:scale=8,limit={600 if args.quick else 3000}"
    groups = [("three-level", conv),
              ("three-level", f"mooncake-synthetic:scale=5{limit}"),
              ("three-level", f"agentic:sessions={100 if args.quick else 1500},scale=4"),
              ("three-level-thin", thin_conv)]
    speed = bench.run("three-level", "mooncake-conversation" + (limit and ":limit=600"),
                      Variant("speed: fabric-cost / solver, real-time replay", {}), keep=False)
    for cluster_name, spec in groups:
        for variant in VARIANTS:
            bench.run(cluster_name, spec, variant)
    sanity = _sanity(bench, args.quick)
    sweep_text = sweep(bench, out, args.quick)
    _, distance = bench.fabric("three-level")
    rows, text = validate(distance)
    nixl_text, nixl = nixl_section(ROOT / "bench" / "results" / "transfers.json")
    sections = (
        ("Setup", _setup_text(speed)),
        ("Headline", findings(bench.records, groups)),
        ("Where the gain comes from, and where it vanishes", ANALYSIS),
        ("Load sweep", sweep_text),
        ("Sanity checks", sanity),
        ("Validation: transfer model", text),
        ("Validation: real NIXL transfers", nixl_text),
    )
    report = SimReport(title="Simulation: what topology-awareness buys", runs=tuple(bench.records),
                       sections=sections)
    # transfer histograms: the default next to topology-unaware disaggregation
    write_report(report, out, plots_dir=out / "sim", compare_with=2)
    extra = json.loads((out / "simulation.json").read_text())
    extra.update({"validation": rows, "nixl": nixl, "speed": speed.model_dump(),
                  "machine": platform.platform(), "python": platform.python_version()})
    (out / "simulation.json").write_text(json.dumps(extra, indent=2) + "\n")
    log(f"wrote {out / 'simulation.md'}")
    return 0


def _sanity(bench: Bench, quick: bool) -> str:
    spec = f"mooncake-conversation:scale=8,limit={300 if quick else 3000}"
    runs = []
    for label, fields in (
            ("aware, real fabric", {}),
            ("unaware, real fabric", {"placement": "unaware", "blind_fabric": True}),
            ("aware, infinite fabric", {"infinite_fabric": True}),
            ("unaware, infinite fabric", {"placement": "unaware", "infinite_fabric": True})):
        runs.append((label, bench.run("three-level-thin", spec, Variant(label, fields),
                                      keep=False).summary))
    unshared = spec + ",unshared=1"
    for label, fields in (("prefix-aware, no shared prefixes", {}),
                          ("prefix-blind, no shared prefixes", {"blind_prefix": True}),
                          ("prefix-aware, shared prefixes", {}),
                          ("prefix-blind, shared prefixes", {"blind_prefix": True})):
        chosen = unshared if "no shared" in label else spec
        runs.append((label, bench.run("three-level", chosen, Variant(label, fields),
                                      keep=False).summary))
    lines = [f"Workload `{spec}` (fabric runs on three-level-thin, prefix runs on "
             "three-level; `unshared=1` makes every block id unique).", "",
             "| run | goodput (req/s) | TTFT p50 / p99 (s) | prefix hits | cross-zone bytes |",
             "| --- | --- | --- | --- | --- |"]
    for label, s in runs:
        lines.append(f"| {label} | {s.goodput_rps:.2f} | {s.ttft.p50:.2f} / {s.ttft.p99:.2f} | "
                     f"{s.prefix_hit_ratio:.1%} | {_cross_zone(s) / 1e12:.2f} TB |")
    return "\n".join(lines)


SWEEP_VARIANTS = (VARIANTS[0], VARIANTS[2], VARIANTS[5])

ANALYSIS = """\
**The seed expected 1.5–2× from topology-awareness. On the three-level cluster with
4:1 / 2:1 / 4:1 uplinks it is 0.99–1.00× on all three workloads; on the cluster with a
32:1 zone uplink it is 1.69× in goodput and 8× in p99 TTFT.** Both numbers are seeded
and reproducible; which one applies depends on whether KV traffic can saturate an
uplink.

Where the gain vanishes (three-level, 4:1 uplinks). A 12k-token Mooncake prompt is 3.9
GB of KV; a TP4 instance moves it over four 400 Gb/s NICs in ~20 ms, while its prefill
takes ~1 s. The topology-unaware setup sends ~19 TB across the zones over the trace
(about 13 GB/s on average against a 200 GB/s zone uplink), so no uplink saturates and
transfers stay two orders of magnitude below TTFT. The default keeps over 99.9 % of
its bytes below the leaf uplinks (73–92 % over NVLink inside a host) and its transfers
are a little faster (p99 0.12 s against 0.13–0.16 s per tier), but that is invisible
next to prefill queueing. Goodput and p99 TTFT match within 1–2 %.

Where it comes from (three-level-thin, 12.5 GB/s between the zones). Unaware
disaggregation sends about half of its KV across the zone uplink; at ×8 load that is
more than the uplink carries, transfer queues grow without bound (cross-zone transfers
take 11 s at p50 and over 2 minutes at p99), decode KV stays reserved for transfers in
flight, and p99 TTFT reaches ~2 minutes. The default moves no byte across zones.
Routing alone recovers it: fabric-cost with the *unaware* placement matches the
default (24.2 req/s), because with 32 instances per zone the router always finds an
in-zone pair — placement matters when the pairs the router can choose from are far
apart, routing matters when traffic would congest a link. Dynamo-style single-domain
routing (decode in the prefill worker's zone) is as good here for the same reason.

What the baselines lose is mostly not topology. Random and round-robin lose 2.8–3.5×
on the conversation trace by ignoring load and cache; least-loaded loses little on the
4:1 cluster but finds 5 % prefix hits instead of 30 %; prefix-only (SGLang-style)
finds the hits but balances worse; label-curve (llm-d-style, decode first with prefix
weight 2) piles requests on the workers that hold a popular prefix and loses 2.9×. The
prefix-hit column against the ideal (infinite-cache) ratio shows the cache effect
separately from the fabric.

Where the default is worse. Fabric-cost prices only the time to first token. On the
agentic workload it concentrates sessions on the decode workers that hold their
prefix, so decode batches grow: TPOT p50 66 ms against 28 ms for least-loaded and E2E
p99 67 s against 31 s; its TPOT p99 (104 ms) is just over the 100 ms SLO, so 98.5 % of
requests meet both SLOs against 100 % (goodput 0.98×). Aggregated serving on the same
GPUs keeps up on short-prompt workloads but loses 19–20 % goodput on the long-prompt
conversation trace, with a TPOT tail from prefills stalling decode steps (no chunked
prefill in the model).

The load sweep shows the same split: on the 4:1 cluster the default and unaware
disaggregation track each other up to saturation (×10) and differ by 7 % past it
(×12), while least-loaded collapses from ×10 on (it ignores the cache, so it does more
prefill work); on the thin cluster unaware disaggregation is congested at every load,
1.3× (×4) to 1.7× (×8, ×10) below the default.

The router's contention estimate undercounts lanes on shared uplinks (see the
validation section); it did not matter here because the fabric-cost router avoids
loaded uplinks anyway, but it would under congestion that cannot be avoided.
"""


def sweep(bench: Bench, out: Path, quick: bool) -> str:
    """Goodput and p99 TTFT against the arrival-rate multiplier, per cluster."""
    scales = (4, 8) if quick else (4, 6, 8, 10, 12)
    limit = 300 if quick else 3000
    lines = [f"First {limit:,} requests of the Mooncake conversation trace at each arrival-rate "
             "multiplier; goodput in req/s (p99 TTFT in s).", "",
             "| cluster | run | " + " | ".join(f"×{x}" for x in scales) + " |",
             "| --- | --- |" + " --- |" * len(scales)]
    for cluster_name in ("three-level", "three-level-thin"):
        series: dict[str, list[tuple[float, float]]] = {}
        for variant in SWEEP_VARIANTS:
            cells = []
            for scale in scales:
                spec = f"mooncake-conversation:scale={scale},limit={limit}"
                s = bench.run(cluster_name, spec, variant, keep=False).summary
                series.setdefault(variant.label, []).append((scale, s.goodput_rps))
                cells.append(f"{s.goodput_rps:.1f} ({s.ttft.p99:.0f})")
            lines.append(f"| {cluster_name} | {variant.label} | " + " | ".join(cells) + " |")
        draw_sweep(series, out / "sim" / f"sweep_{cluster_name}.png",
                   title=f"{cluster_name}: goodput against load (Mooncake conversation)",
                   xlabel="arrival-rate multiplier", ylabel="goodput (req/s)")
    lines += ["", "![sweep three-level](sim/sweep_three-level.png)",
              "![sweep three-level-thin](sim/sweep_three-level-thin.png)"]
    return "\n".join(lines)


def _setup_text(speed: RunRecord) -> str:
    s = speed.summary
    three = cluster("three-level")
    return (f"Model Llama-3-70B (bf16 KV, 320 KiB/token), TP4 instances on HGX H100 hosts; "
            f"capacity model `scheduler.capacity` (derived H100 figures). Cluster "
            f"`three-level`: {three.description}; {three.prefill} prefill + {three.decode} "
            f"decode instances. Traces replayed at the stated `scale` (arrival-rate "
            f"multiplier) so the 64 instances run at a realistic load. SLOs: TTFT ≤ 1 s + "
            f"0.25 s per 1k prompt tokens, TPOT ≤ 100 ms.\n\n"
            f"**Speed**: the full {s.requests:,}-request Mooncake conversation trace "
            f"(real-time arrivals) on the 64-instance cluster ran in **{s.wall_s:.1f} s** of "
            f"wall clock ({s.events:,} events, one real router call per request) on "
            f"{platform.machine()} / Python {platform.python_version()}.")


if __name__ == "__main__":
    raise SystemExit(main())
