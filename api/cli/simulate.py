"""``toposched simulate``: replay a workload on a cluster with several policies and compare.

``--scenario NAME|FILE`` takes everything from a scenario document
(:mod:`sim.scenario_file`: cluster, instances, engine, workload, arrivals, SLOs,
transfers, policies); ``--cluster``, ``--workload``, ``--policies``, ``--prefill``,
``--decode``, ``--tp``, ``--model`` and ``--seed`` override it when given.

Each entry of ``--policies`` is ``POLICY[@PLACEMENT][+FLAG...]``: a packaged policy
(or a policy file), optionally with its own placement method (else ``--placement``),
and flags: ``+aggregated`` (every instance prefills and decodes its own requests),
``+fabric-blind`` (the router prices transfers as free: topology-unaware routing),
``+prefix-blind`` (the router never sees cached prefixes), ``+no-prefix-pull`` (turns
off prefix pull, on by default: a prefill worker may copy a cached prefix from the
worker holding it over the fabric instead of recomputing it, where ``fabric-cost``
prices that cheaper; a scenario's ``router.prefix_pull: false`` turns it off for every
entry) and ``+prefix-pull`` (turns it on where the scenario turned it off).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from api.cli.output import print_json
from sim.adapters import PlacementMethod
from sim.report import RunRecord, SimReport, comparison_table, write_report
from sim.scenario_file import Scenario, load_scenario, packaged_scenarios
from sim.scenarios import CLUSTERS, ClusterScenario, cluster, workload
from sim.simulator import simulate
from topology.distance import DistanceModel
from topology.errors import InputError
from topology.spec import FabricSpec, load_fabric

FLAGS = ("aggregated", "fabric-blind", "prefix-blind", "prefix-pull", "no-prefix-pull")


@dataclass(frozen=True)
class RunSpec:
    """One entry of ``--policies``."""

    policy: str
    placement: PlacementMethod
    flags: frozenset[str] = frozenset()


def parse_runs(text: str, default: PlacementMethod) -> list[RunSpec]:
    """Parse ``P1,P2@unaware,P3+aggregated`` into run specs."""
    runs = []
    for raw in filter(None, (part.strip() for part in text.split(","))):
        body, *flags = raw.split("+")
        unknown = [f for f in flags if f not in FLAGS]
        if unknown:
            raise InputError(f"--policies entry {raw!r}: unknown flag {unknown[0]!r} "
                             f"(known: {', '.join(FLAGS)})")
        if {"prefix-pull", "no-prefix-pull"} <= set(flags):
            raise InputError(f"--policies entry {raw!r}: +prefix-pull and +no-prefix-pull "
                             "contradict each other")
        policy, at, method = body.partition("@")
        method = method if at else default
        if method not in get_args(PlacementMethod):
            raise InputError(f"--policies entry {raw!r}: placement must be one of "
                             f"{', '.join(get_args(PlacementMethod))}")
        runs.append(RunSpec(policy, method, frozenset(flags)))  # type: ignore[arg-type]
    if not runs:
        raise InputError("--policies names no policy")
    return runs


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` command."""
    parser = subparsers.add_parser(
        "simulate", help="replay a trace on a simulated cluster and compare policies",
        description="Discrete-event simulation with the real router, policies and placement. "
                    f"Clusters: {', '.join(sorted(CLUSTERS))} or a fabric file (then give "
                    "--prefill/--decode). Workloads: NAME[:scale=X,limit=N,unshared=1].")
    parser.add_argument("--scenario", default=None, metavar="NAME|FILE",
                        help="scenario document (packaged: "
                             f"{', '.join(packaged_scenarios())}); flags below override it")
    parser.add_argument("--cluster", default=None, help="cluster scenario name or fabric file")
    parser.add_argument("--workload", default=None, help="workload spec")
    parser.add_argument("--policies", default=None,
                        help="comma-separated POLICY[@solver|greedy|unaware][+aggregated]"
                             "[+fabric-blind][+prefix-blind][+no-prefix-pull|+prefix-pull] "
                             "(default fabric-cost; prefix pull is on unless +no-prefix-pull "
                             "or the scenario's router.prefix_pull: false)")
    parser.add_argument("--placement", default=None, choices=get_args(PlacementMethod))
    parser.add_argument("--prefill", type=int, default=None, help="prefill instances")
    parser.add_argument("--decode", type=int, default=None, help="decode instances")
    parser.add_argument("--tp", type=int, default=None, help="GPUs per instance (default 4)")
    parser.add_argument("--model", default=None, help="model (default llama-3-70b)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--infinite-fabric", action="store_true",
                        help="transfers take no time (sanity check)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("-o", "--output", default=None, metavar="DIR",
                        help="write simulation.json, simulation.md and PNGs here")
    parser.set_defaults(handler=handle_simulate)


def _cluster(args: argparse.Namespace) -> tuple[str, FabricSpec, int, int, int]:
    if args.cluster in CLUSTERS or not Path(args.cluster).exists():
        scenario: ClusterScenario = cluster(args.cluster)
        return (scenario.name, scenario.fabric(), args.prefill or scenario.prefill,
                args.decode or scenario.decode, args.tp or scenario.tp)
    if args.prefill is None or args.decode is None:
        raise InputError("a fabric file needs --prefill and --decode")
    fabric = load_fabric(args.cluster)
    return fabric.name, fabric, args.prefill, args.decode, args.tp or 4


def _scenario(args: argparse.Namespace) -> Scenario:
    """The scenario the flags describe: the document's, with the flags given on top."""
    if args.scenario is None:
        if args.cluster is None or args.workload is None:
            raise InputError("give --scenario, or both --cluster and --workload")
        doc = Scenario.model_validate({
            "version": 1, "name": "command-line", "cluster": {"name": "small"},
            "instances": {"prefill": 1, "decode": 1}, "workload": args.workload})
    else:
        doc = load_scenario(args.scenario)
    inst = doc.instances
    update: dict[str, Any] = {
        "instances": inst.model_copy(update={
            key: value for key, value in (("prefill", args.prefill), ("decode", args.decode),
                                          ("tp", args.tp)) if value is not None})}
    for key, value in (("workload", args.workload), ("model", args.model),
                       ("seed", args.seed), ("placement", args.placement)):
        if value is not None:
            update[key] = value
    if args.policies is not None:
        update["policies"] = tuple(p.strip() for p in args.policies.split(","))
    if args.infinite_fabric:
        update["transfers"] = "infinite"
    return doc.model_copy(update=update)


def _pull_flag(flags: frozenset[str]) -> bool | None:
    """The entry's prefix-pull setting; ``None``: the scenario's (on by default)."""
    if "no-prefix-pull" in flags:
        return False
    return True if "prefix-pull" in flags else None


def handle_simulate(args: argparse.Namespace) -> int:
    """Run every requested policy and print or write the comparison."""
    doc = _scenario(args)
    runs = parse_runs(",".join(doc.policies), doc.placement)
    if args.cluster is not None:
        name, fabric, prefill, decode, tp = _cluster(args)
        doc = doc.model_copy(update={"instances": doc.instances.model_copy(
            update={"prefill": prefill, "decode": decode, "tp": tp})})
    else:
        name, fabric = doc.name, doc.fabric(Path(args.scenario).parent if args.scenario else None)
    spec_text = doc.workload_spec() if args.scenario else doc.workload
    trace = workload(spec_text, doc.seed)
    distance = DistanceModel(fabric)
    records = []
    with _Progress(enabled=not args.json and sys.stderr.isatty()) as bar:
        for spec in runs:
            config = doc.config(spec.policy, placement=spec.placement,
                                aggregated=("aggregated" in spec.flags) or None,
                                blind_fabric="fabric-blind" in spec.flags,
                                blind_prefix="prefix-blind" in spec.flags,
                                prefix_pull=_pull_flag(spec.flags))
            summary = simulate(fabric, trace, config, distance=distance,
                               progress=bar.task(config.label))
            records.append(RunRecord(label=config.label, cluster=name, workload=spec_text,
                                     policy=spec.policy, placement=spec.placement,
                                     aggregated=config.aggregated,
                                     infinite_fabric=config.infinite_fabric, seed=doc.seed,
                                     summary=summary))
    report = SimReport(title=f"Simulation: {name} · {spec_text}", runs=tuple(records))
    if args.output:
        write_report(report, args.output, draw=not args.no_plots)
    if args.json:
        print_json(report)
    else:
        print(comparison_table(records, records[0]))
    return 0


class _Progress:
    """A rich progress bar on stderr per run (silent when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress

            self._progress = Progress(transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def task(self, label: str) -> Any:
        """A callback ``(done, total)`` updating a bar for ``label`` (or ``None``)."""
        if self._progress is None:
            return None
        progress = self._progress
        task_id = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task_id, completed=done, total=total)

        return update
