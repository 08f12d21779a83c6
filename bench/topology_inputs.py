"""Benchmark rows for the topology inputs of issues 11 and 16, at 8,192 GPUs.

Every comparison runs through ``bench/harness.py`` (alternating repetitions, identical
inputs, outputs checked): each side builds a fabric *from files on disk*, end to end
(read, parse, merge, build, distance model), and answers the tier of the same 2,000
GPU pairs; the harness refuses the run if any side prices a pair differently.

* rail-optimised InfiniBand-style cluster (1 zone, 8 pods × 8 racks × 16 HGX H100 hosts):
  the inventory + LLDP path (``netdevs`` written in the inventory) is the anchor; against
  it the same inventory with RDMA device captures instead of ``netdevs``,
  ibnetdiscover + nvidia-smi and iblinkinfo + nvidia-smi with no inventory at all (the
  iblinkinfo capture is the same subnet as the ibnetdiscover one, printed by
  ``topology.writers.iblinkinfo_text``);
* ToR cloud-style cluster (2 zones × 4 pods × 8 racks × 16 hosts): inventory + LLDP
  against node labels + nvidia-smi and instance topology + nvidia-smi, no inventory;
* LLDP parsing, the previous parser (before issue 11 item 13's fix) against the
  current one on the same 50,000-interface captures;
* parse-only rows for each new format at this size, and the subnet parsed from
  ibnetdiscover (anchor) against iblinkinfo classic and ``-l`` (same cables checked).

Run through ``bench/topology_bench.py`` (which appends these rows to ``topology.md``).
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness
from topology.aws_topology import parse_aws_topology
from topology.build import Captures, build_fabric
from topology.distance import DistanceModel
from topology.iblinkinfo import parse_iblinkinfo
from topology.ibnetdiscover import IbFabric, parse_ibnetdiscover
from topology.inventory import load_inventory
from topology.k8s import parse_k8s_nodes
from topology.rdma_devices import parse_rdma_devices
from topology.spec import FabricSpec
from topology.synth import SynthParams, synth_cluster
from topology.writers import (
    aws_topology_json,
    iblinkinfo_text,
    ibnetdiscover_text,
    k8s_nodes_json,
    rdma_devices_text,
    write_captures,
)

ROOT = Path(__file__).resolve().parents[1]
RAILS = dict(zones=1, pods_per_zone=8, racks_per_pod=8, hosts_per_rack=16)
TORS = dict(zones=2, pods_per_zone=4, racks_per_pod=8, hosts_per_rack=16, rails=False)
PAIRS = 2_000
#: The LLDP parser as it was before issue 11 item 13 (superlinear on big captures).
PREVIOUS_LLDP = "f834695"
LLDP_INTERFACES = 50_000


@dataclass
class Cluster:
    """A synthetic cluster written to disk in every form its comparison reads."""

    spec: FabricSpec
    folder: Path
    inventory: Path
    pairs: list[tuple[str, str]]
    files: dict[str, Any]


def _pairs(spec: FabricSpec, seed: int = 11) -> list[tuple[str, str]]:
    names, rng = spec.gpu_names(), random.Random(seed)
    return [(rng.choice(names), rng.choice(names)) for _ in range(PAIRS)]


def rails_cluster(folder: Path) -> Cluster:
    """The rail-optimised cluster: inventory + LLDP, RDMA captures, an ibnetdiscover."""
    spec = synth_cluster(SynthParams(**RAILS))
    inventory = write_captures(spec, folder)
    doc = inventory.read_text()
    rdma = {}
    for host in spec.hosts:
        rdma[host.name] = folder / "captures" / f"{host.name}.rdma.txt"
        rdma[host.name].write_text(rdma_devices_text(host))
    no_netdevs = folder / "inventory-rdma.yaml"
    no_netdevs.write_text(_without_netdevs(doc, spec))
    subnet = folder / "subnet.txt"
    subnet.write_text(ibnetdiscover_text(spec))
    parsed = parse_ibnetdiscover(subnet.read_text(), str(subnet))
    links = {"classic": folder / "subnet.iblinkinfo.txt",
             "line": folder / "subnet.iblinkinfo-l.txt"}
    for form, path in links.items():
        path.write_text(iblinkinfo_text(parsed, line=form == "line"))
    nvsmi = {h.name: folder / "captures" / f"{h.name}.nvsmi.txt" for h in spec.hosts}
    return Cluster(spec, folder, inventory, _pairs(spec),
                   {"rdma_inventory": no_netdevs, "subnet": subnet, "nvsmi": nvsmi,
                    "iblinkinfo": links["classic"], "iblinkinfo_line": links["line"]})


def _without_netdevs(inventory: str, spec: FabricSpec) -> str:
    """The inventory with ``rdma:`` capture paths where ``netdevs:`` maps were."""
    import yaml

    doc = yaml.safe_load(inventory)
    for zone in doc["zones"]:
        for pod in zone["pods"]:
            for rack in pod["racks"]:
                for host in rack["hosts"]:
                    host.pop("netdevs")
                    host["rdma"] = f"captures/{host['name']}.rdma.txt"
    return str(yaml.safe_dump(doc, sort_keys=False))


def tors_cluster(folder: Path) -> Cluster:
    """The ToR cluster: inventory + LLDP, node labels, instance topology."""
    spec = synth_cluster(SynthParams(**TORS))
    inventory = write_captures(spec, folder)
    (folder / "nodes.json").write_text(k8s_nodes_json(spec))
    (folder / "instances.json").write_text(aws_topology_json(spec))
    nodes = json.loads((folder / "nodes.json").read_text())["items"]
    instance = {n["metadata"]["name"]: n["spec"]["providerID"].rsplit("/", 1)[-1]
                for n in nodes}
    nvsmi = {h.name: folder / "captures" / f"{h.name}.nvsmi.txt" for h in spec.hosts}
    return Cluster(spec, folder, inventory, _pairs(spec),
                   {"nodes": folder / "nodes.json", "instances": folder / "instances.json",
                    "nvsmi": nvsmi, "instance": instance})


def _tiers(spec: FabricSpec, pairs: list[tuple[str, str]],
           rename: dict[str, str] | None = None) -> list[int]:
    model = DistanceModel(spec)

    def name(gpu: str) -> str:
        host, _, local = gpu.rpartition("/")
        return f"{(rename or {}).get(host, host)}/{local}"

    return [int(model.tier(name(a), name(b))) for a, b in pairs]


def _side(name: str, cluster: Cluster, build: Callable[[], FabricSpec],
          rename: dict[str, str] | None = None) -> harness.Side:
    def prepare() -> Callable[[], list[int]]:
        return lambda: _tiers(build(), cluster.pairs, rename)
    return harness.Side(name, prepare, ops=1)


def rails_sides(c: Cluster) -> list[harness.Side]:
    """Anchor: inventory + LLDP; candidates: RDMA captures, ibnetdiscover, iblinkinfo (no
    inventory)."""
    return [
        _side("inventory + LLDP", c, lambda: build_fabric(load_inventory(c.inventory))),
        _side("inventory + LLDP + RDMA captures", c,
              lambda: build_fabric(load_inventory(c.files["rdma_inventory"]))),
        _side("ibnetdiscover + nvidia-smi, no inventory", c, lambda: build_fabric(
            None, Captures(nvsmi=c.files["nvsmi"], ibnetdiscover=[c.files["subnet"]]))),
        _side("iblinkinfo + nvidia-smi, no inventory", c, lambda: build_fabric(
            None, Captures(nvsmi=c.files["nvsmi"], ibnetdiscover=[c.files["iblinkinfo"]]))),
    ]


def tors_sides(c: Cluster) -> list[harness.Side]:
    """Anchor: inventory + LLDP; candidates: node labels, instance topology (no inventory)."""
    by_instance = {c.files["instance"][h]: path for h, path in c.files["nvsmi"].items()}
    return [
        _side("inventory + LLDP", c, lambda: build_fabric(load_inventory(c.inventory))),
        _side("node labels + nvidia-smi, no inventory", c, lambda: build_fabric(
            None, Captures(nvsmi=c.files["nvsmi"], k8s_nodes=c.files["nodes"]))),
        _side("instance topology + nvidia-smi, no inventory", c, lambda: build_fabric(
            None, Captures(nvsmi=by_instance, aws_topology=[c.files["instances"]])),
            rename=c.files["instance"]),
    ]


def lldp_captures(folder: Path) -> dict[str, str]:
    """keyvalue and json0 captures of LLDP_INTERFACES interfaces (about 12 MB each)."""
    kv, interfaces = [], []
    for i in range(LLDP_INTERFACES):
        p, mac = f"lldp.eth{i}", f"b8:ce:f6:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        kv += [f"{p}.via=LLDP", f"{p}.rid={i + 1}", f"{p}.age=0 day, 01:02:03",
               f"{p}.chassis.mac={mac}", f"{p}.chassis.name=leaf-{i // 64}",
               f"{p}.chassis.mgmt-ip=10.0.{i >> 8 & 255}.{i & 255}",
               f"{p}.port.ifname=Ethernet{i % 64 * 8}", f"{p}.port.ttl=120",
               f"{p}.vlan.vlan-id=100"]
        interfaces.append({"name": f"eth{i}", "via": "LLDP", "chassis": [{
            "id": [{"type": "mac", "value": mac}], "name": [{"value": f"leaf-{i // 64}"}]}],
            "port": [{"id": [{"type": "ifname", "value": f"Ethernet{i % 64 * 8}"}],
                      "ttl": [{"value": "120"}]}]})
    texts = {"keyvalue": "\n".join(kv) + "\n",
             "json0": json.dumps({"lldp": [{"interface": interfaces}]})}
    for name, text in texts.items():
        (folder / f"lldp.{name}").write_text(text)
    return texts


def previous_lldp_parser(folder: Path) -> Callable[[str, str], Any]:
    """``parse_lldp`` as it was at PREVIOUS_LLDP, loaded from git."""
    source = subprocess.run(["git", "show", f"{PREVIOUS_LLDP}:topology/lldp.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = folder / "lldp_previous.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lldp_previous", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lldp_previous"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    parser: Callable[[str, str], Any] = module.parse_lldp
    return parser


def lldp_sides(text: str, previous: Callable[[str, str], Any]) -> list[harness.Side]:
    """Previous parser (anchor) against the current one; outputs as plain neighbours."""
    from topology.lldp import parse_lldp

    def side(name: str, parse: Callable[[str, str], Any]) -> harness.Side:
        return harness.Side(name, lambda: lambda: parse(text, "lldp"), ops=LLDP_INTERFACES,
                            canonical=lambda c: [(n.interface, n.chassis_id, n.port_id)
                                                 for n in c.neighbors])
    return [side("previous parser", previous), side("current parser", parse_lldp)]


def parse_sides(rails: Cluster, tors: Cluster) -> dict[str, harness.Side]:
    """One side per new format: parsing only, the whole cluster's captures."""
    subnet = rails.files["subnet"].read_text()
    rdma = [(h.name, (rails.folder / "captures" / f"{h.name}.rdma.txt").read_text())
            for h in rails.spec.hosts]
    nodes = tors.files["nodes"].read_text()
    instances = tors.files["instances"].read_text()
    return {
        "ibnetdiscover, 8,192 HCAs": harness.Side(
            "ibnetdiscover", lambda: lambda: len(parse_ibnetdiscover(subnet, "s").nodes)),
        "RDMA device maps, 1,024 hosts": harness.Side(
            "rdma", lambda: lambda: sum(len(parse_rdma_devices(t, h).devices) for h, t in rdma)),
        "node labels, 1,024 nodes": harness.Side(
            "k8s", lambda: lambda: len(parse_k8s_nodes(nodes, "n").nodes)),
        "instance topology, 1,024 instances": harness.Side(
            "aws", lambda: lambda: len(parse_aws_topology(instances, "i").instances)),
    }


def subnet_parse_sides(rails: Cluster) -> list[harness.Side]:
    """The same subnet parsed from ibnetdiscover (anchor), iblinkinfo and iblinkinfo -l;
    the harness checks all three give the same cables."""
    texts = {"ibnetdiscover": (rails.files["subnet"], parse_ibnetdiscover),
             "iblinkinfo": (rails.files["iblinkinfo"], parse_iblinkinfo),
             "iblinkinfo -l": (rails.files["iblinkinfo_line"], parse_iblinkinfo)}

    def side(name: str) -> harness.Side:
        path, parse = texts[name]
        text = path.read_text()
        return harness.Side(name, lambda: lambda: parse(text, "subnet"), canonical=_cables)
    return [side(name) for name in texts]


def _cables(fabric: IbFabric) -> list[tuple[str, int, str, int, float | None]]:
    return sorted((link.a, link.a_port, link.b, link.b_port, link.gbit) for link in fabric.links)


def peak_rss_mb(kind: str, folder: Path) -> float:
    """Peak RSS of one end-to-end build in a fresh process (``kind``: a side's builder)."""
    done = subprocess.run([sys.executable, "-m", "bench.topology_inputs", kind, str(folder)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def _child(kind: str, folder: Path) -> None:
    """In a fresh process: one build from the files a parent wrote in ``folder``."""
    nvsmi = {path.name.removesuffix(".nvsmi.txt"): path
             for path in (folder / "captures").glob("*.nvsmi.txt")}
    if kind in ("ibnetdiscover", "iblinkinfo"):
        subnet = folder / ("subnet.txt" if kind == "ibnetdiscover" else "subnet.iblinkinfo.txt")
        build_fabric(None, Captures(nvsmi=nvsmi, ibnetdiscover=[subnet]))
    else:
        build_fabric(None, Captures(nvsmi=nvsmi, k8s_nodes=folder / "nodes.json"))
    print(_high_water_mb())


def _high_water_mb() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: Linux carries that over fork and exec,
    so a child of a big parent reports the parent's peak; ``VmHWM`` starts with the exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(repeats: int, warmup: int,
        condition: harness.ConditionRecord | None) -> dict[str, Any]:
    """Every comparison of this module, under the caller's CPU condition."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for sub in ("rails", "tors", "lldp"):
            (base / sub).mkdir()
        harness.progress("topology", "writing the 8,192-GPU clusters' captures")
        rails, tors = rails_cluster(base / "rails"), tors_cluster(base / "tors")
        out: dict[str, Any] = {"clusters": {"rails": RAILS, "tors": TORS}}
        for name, sides in (("rails", rails_sides(rails)), ("tors", tors_sides(tors))):
            harness.progress("topology", f"building the {name} cluster from each input")
            out[name] = harness.compare(sides, repeats=repeats, warmup=warmup,
                                        condition=condition)
        texts, previous = lldp_captures(base / "lldp"), previous_lldp_parser(base / "lldp")
        for variant, text in texts.items():
            harness.progress("topology", f"LLDP {variant}: previous vs current parser")
            out[f"lldp_{variant}"] = harness.compare(
                lldp_sides(text, previous), repeats=repeats, warmup=warmup, condition=condition)
        out["parse"] = {label: harness.compare([side], repeats=repeats, warmup=warmup,
                                               condition=condition)
                        for label, side in parse_sides(rails, tors).items()}
        harness.progress("topology", "the subnet parsed: ibnetdiscover vs iblinkinfo")
        out["parse_subnet"] = harness.compare(subnet_parse_sides(rails), repeats=repeats,
                                              warmup=warmup, condition=condition)
        harness.progress("topology", "peak RSS of the no-inventory builds (fresh processes)")
        out["rss_mb"] = {"ibnetdiscover + nvidia-smi": peak_rss_mb("ibnetdiscover", rails.folder),
                         "iblinkinfo + nvidia-smi": peak_rss_mb("iblinkinfo", rails.folder),
                         "node labels + nvidia-smi": peak_rss_mb("k8s", tors.folder)}
    return out


def markdown(results: dict[str, Any]) -> list[str]:
    """The report section for these rows."""
    lines = ["", "## Topology inputs (issues 11 and 16) at 8,192 GPUs", "",
             "Each build side reads every capture from disk, parses, merges, builds and makes "
             "the distance model, then answers the tier of the same 2,000 GPU pairs (the "
             "harness checked all sides agree on every pair, every repetition). Times are "
             "wall seconds per build, median [min–max]; ratio = anchor time / side time "
             "(> 1: faster than the anchor).", "",
             "| cluster | side | build | ratio to anchor |", "| --- | --- | ---: | ---: |"]
    for name, label in (("rails", "rail-optimised, 1 zone"), ("tors", "ToR, 2 zones")):
        result = results[name]
        anchor = next(iter(result.sides))
        for side, found in result.sides.items():
            ratio = "anchor" if side == anchor else harness.fmt_ratio(result.ratio(side, anchor))
            lines.append(f"| {label} | {side} | {_seconds(found.wall)} | {ratio} |")
    lines += ["", f"LLDP parsing, {LLDP_INTERFACES:,} interfaces (previous parser = "
              f"`{PREVIOUS_LLDP}`, before issue 11 item 13):", "",
              "| capture | previous | current | ratio |", "| --- | ---: | ---: | ---: |"]
    for variant in ("keyvalue", "json0"):
        result = results[f"lldp_{variant}"]
        prev, cur = result.sides["previous parser"], result.sides["current parser"]
        lines.append(f"| {variant} | {_seconds(prev.wall)} | {_seconds(cur.wall)} | "
                     f"{harness.fmt_ratio(result.ratio('current parser', 'previous parser'))} |")
    lines += ["", "Parsing alone (the whole cluster's captures of one format):", "",
              "| captures | parse |", "| --- | ---: |"]
    for label, result in results["parse"].items():
        lines.append(f"| {label} | {_seconds(next(iter(result.sides.values())).wall)} |")
    result = results["parse_subnet"]
    lines += ["", "The rail cluster's subnet (8,192 HCAs and every switch cable) parsed from "
              "each tool's output, same cables checked (ratio = anchor time / side time):", "",
              "| capture | parse | ratio to ibnetdiscover |", "| --- | ---: | ---: |"]
    for side, found in result.sides.items():
        ratio = ("anchor" if side == "ibnetdiscover"
                 else harness.fmt_ratio(result.ratio(side, "ibnetdiscover")))
        lines.append(f"| {side} | {_seconds(found.wall)} | {ratio} |")
    lines += ["", "Peak RSS of one build without an inventory, fresh process: " + ", ".join(
        f"{k} {v:.0f} MB" for k, v in results["rss_mb"].items()) + "."]
    return lines


def _seconds(stats: harness.Stats) -> str:
    return f"{stats.median:.2f} s [{stats.min:.2f}–{stats.max:.2f}]"


if __name__ == "__main__":
    _child(sys.argv[1], Path(sys.argv[2]))
