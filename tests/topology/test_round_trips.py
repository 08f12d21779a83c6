"""Round trips: a synthetic fabric written as the captures issue 16 reads (ibnetdiscover,
node labels, instance topology) and built back without an inventory prices every GPU
pair at the tier of the original."""

from __future__ import annotations

import json
from itertools import combinations

from topology.aws_topology import parse_aws_topology
from topology.build import Captures, build_fabric
from topology.distance import DistanceModel
from topology.ibnetdiscover import parse_ibnetdiscover
from topology.k8s import parse_k8s_nodes
from topology.nvsmi import parse_nvidia_smi
from topology.spec import FabricSpec
from topology.synth import SynthParams, synth_cluster
from topology.writers import aws_topology_json, ibnetdiscover_text, k8s_nodes_json, nvsmi_text


def _nvsmi(spec: FabricSpec, rename: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    rename = rename or {}
    return {"nvsmi": {rename.get(h.name, h.name): parse_nvidia_smi(nvsmi_text(h), h.name)
                      for h in spec.hosts}}


def _same_tiers(original: FabricSpec, built: FabricSpec,
                rename: dict[str, str] | None = None) -> None:
    rename = rename or {}
    want, got = DistanceModel(original), DistanceModel(built)
    gpus = [f"{h.name}/gpu{g}" for h in original.hosts for g in (0, 3)]
    for a, b in combinations(gpus, 2):
        ra, rb = (rename.get(x.split("/")[0], x.split("/")[0]) + "/" + x.split("/")[1]
                  for x in (a, b))
        assert got.tier(ra, rb) == want.tier(a, b), (a, b)


def test_an_infiniband_fat_tree_built_back_from_ibnetdiscover() -> None:
    spec = synth_cluster(SynthParams(zones=1, pods_per_zone=2, racks_per_pod=2,
                                     hosts_per_rack=2))
    subnet = parse_ibnetdiscover(ibnetdiscover_text(spec), "subnet")
    built = build_fabric(None, Captures(parsed=_nvsmi(spec), ib_parsed=[subnet]))
    _same_tiers(spec, built)
    rails = {leaf.name: leaf.rail for leaf in built.leaves}
    assert rails == {leaf.name: leaf.rail for leaf in spec.leaves}
    assert not [w for w in built.warnings if w.startswith("rail break")]


def test_node_labels_built_back_with_two_zones() -> None:
    spec = synth_cluster(SynthParams(zones=2, pods_per_zone=2, racks_per_pod=2,
                                     hosts_per_rack=2, rails=False))
    nodes = parse_k8s_nodes(k8s_nodes_json(spec), "nodes")
    built = build_fabric(None, Captures(parsed=_nvsmi(spec), k8s_parsed=nodes))
    assert {z.name for z in built.zones} == {"z0", "z1"}
    _same_tiers(spec, built)


def test_instance_topology_built_back() -> None:
    spec = synth_cluster(SynthParams(zones=2, pods_per_zone=2, racks_per_pod=2,
                                     hosts_per_rack=2, rails=False))
    text = aws_topology_json(spec)
    nodes = json.loads(k8s_nodes_json(spec))["items"]
    rename = {n["metadata"]["name"]: n["spec"]["providerID"].rsplit("/", 1)[-1] for n in nodes}
    built = build_fabric(None, Captures(parsed=_nvsmi(spec, rename),
                                        aws_parsed=[parse_aws_topology(text, "aws")]))
    _same_tiers(spec, built, rename)
