"""Cloud topology into the fabric (issue 16): AWS network-node labels and
describe-instance-topology, GKE topology labels, contradictions warned, and a fabric from
node labels + nvidia-smi with no inventory — through the CLI and the service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.cli.main import run
from tests.api.service_builders import WORKER, bearer, make_app
from tests.topology.builders import one_rack_inventory
from topology.aws_topology import parse_aws_topology
from topology.build import Captures, build_fabric
from topology.distance import DistanceModel
from topology.errors import ParseError
from topology.inventory import load_inventory
from topology.k8s import parse_k8s_nodes
from topology.tiers import Tier

FIXTURES = Path(__file__).parents[1] / "fixtures"
NVSMI = FIXTURES / "nvsmi" / "dgx_h100_m.txt"
EKS = FIXTURES / "k8s" / "eks_p5.json"
GKE = FIXTURES / "k8s" / "gke_a3.json"
AWS = FIXTURES / "aws" / "awscli_example.json"


def _names(path: Path) -> list[str]:
    return [item["metadata"]["name"] for item in json.loads(path.read_text())["items"]]


def _tiers(fabric: Path, capsys: pytest.CaptureFixture[str], a: str,
           others: list[str]) -> list[str]:
    found = []
    for b in others:
        assert run(["topo", "distance", str(fabric), f"{a}/gpu0", f"{b}/gpu0", "--json"]) == 0
        found.append(json.loads(capsys.readouterr().out)["tier"])
    return found


def test_eks_labels_and_nvidia_smi_alone_build_the_fabric(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = _names(EKS)
    args = ["topo", "build", "--k8s-nodes", str(EKS), "-o", str(tmp_path / "f.json"), "--json"]
    for name in names:
        args += ["--nvsmi", f"{name}={NVSMI}"]
    assert run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["hosts"] == 4 and summary["zones"] == 1
    assert any(w.startswith("no inventory: the hierarchy was derived from") for w in
               summary["warnings"])
    assert not any("no switch information" in w for w in summary["warnings"])
    assert _tiers(tmp_path / "f.json", capsys, names[0], names[1:]) == [
        "same_leaf", "same_pod", "same_zone"]
    spec = json.loads((tmp_path / "f.json").read_text())
    assert spec["zones"][0] == {"name": "us-east-2b", "region": "us-east-2",
                                "uplink_gbit": None, "uplink_latency_us": None}


def test_gke_labels_place_subblocks_blocks_and_physical_hosts() -> None:
    nodes = parse_k8s_nodes(GKE.read_text(), str(GKE))
    names = _names(GKE)
    spec = build_fabric(None, Captures(k8s_parsed=nodes, nvsmi={n: NVSMI for n in names}))
    model = DistanceModel(spec)
    tiers = [model.tier(f"{names[0]}/gpu0", f"{other}/gpu0") for other in names[1:]]
    assert tiers == [Tier.SAME_LEAF, Tier.SAME_POD, Tier.SAME_ZONE]
    assert spec.host(names[0]).rack == nodes.nodes[0].gce_host  # the physical machine


def test_the_template_stands_in_for_missing_captures() -> None:
    nodes = parse_k8s_nodes(EKS.read_text(), str(EKS))
    spec = build_fabric(None, Captures(k8s_parsed=nodes, template="hgx-h100"))
    assert len(spec.hosts) == 4 and all(len(h.gpus) == 8 for h in spec.hosts)
    without = build_fabric(None, Captures(k8s_parsed=nodes, nvsmi={_names(EKS)[0]: NVSMI}))
    assert [h.name for h in without.hosts] == _names(EKS)[:1]
    assert any("3 Kubernetes GPU node(s) have no capture" in w for w in without.warnings)


def test_describe_instance_topology_places_instances(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = [i.instance_id for i in parse_aws_topology(AWS.read_text()).instances]
    args = ["topo", "build", "--aws-topology", str(AWS), "-o", str(tmp_path / "f.json")]
    for instance in ids:
        args += ["--nvsmi", f"{instance}={NVSMI}"]
    assert run(args) == 0
    capsys.readouterr()
    assert _tiers(tmp_path / "f.json", capsys, ids[0], ids[1:]) == [
        "same_leaf", "cross_zone", "same_zone"]


def _eks_with(change: dict[str, str], node: int = 3) -> str:
    doc = json.loads(EKS.read_text())
    doc["items"][node]["metadata"]["labels"].update(change)
    return json.dumps(doc)


def test_contradictory_labels_are_warned() -> None:
    first = parse_k8s_nodes(EKS.read_text()).nodes[0]
    nodes = parse_k8s_nodes(_eks_with({  # node 3 under node 0's leaf, another parent
        "topology.k8s.aws/network-node-layer-3": first.network_layers[2]}))
    spec = build_fabric(None, Captures(k8s_parsed=nodes, template="hgx-h100"))
    assert any(f"network node {first.network_layers[2]} is under" in w
               and "contradictory cloud topology" in w for w in spec.warnings)
    gapped = parse_k8s_nodes(_eks_with({"topology.k8s.aws/network-node-layer-2": ""}))
    spec = build_fabric(None, Captures(k8s_parsed=gapped, template="hgx-h100"))
    assert any("have a gap" in w for w in spec.warnings)


def test_labels_and_the_api_disagreeing_is_warned_and_the_api_wins() -> None:
    nodes = parse_k8s_nodes(EKS.read_text())
    node = nodes.nodes[0]
    api = json.dumps({"Instances": [{"InstanceId": node.instance_id, "AvailabilityZone":
                                     "us-east-2b", "NetworkNodes": ["nn-a", "nn-b", "nn-c"]}]})
    spec = build_fabric(None, Captures(k8s_parsed=nodes, template="hgx-h100",
                                       aws_parsed=[parse_aws_topology(api, "api.json")]))
    assert any(f"host {node.name}: node labels place it under" in w for w in spec.warnings)
    assert spec.host(node.name).uplink_leaf == "nn-c"


def test_labels_place_hosts_of_an_inventory(tmp_path: Path) -> None:
    names = _names(EKS)
    (tmp_path / "inv.yaml").write_text(
        one_rack_inventory({n: {"nvsmi": NVSMI} for n in names}, zone="us-east-2b"))
    spec = build_fabric(load_inventory(tmp_path / "inv.yaml"),
                        Captures(k8s_nodes=EKS))
    model = DistanceModel(spec)
    assert model.tier(f"{names[0]}/gpu0", f"{names[1]}/gpu0") is Tier.SAME_LEAF
    assert model.tier(f"{names[0]}/gpu0", f"{names[2]}/gpu0") is Tier.SAME_POD


@pytest.mark.parametrize(("text", "message"), [
    ('{"Instances": [{"NetworkNodes": ["a"]}]}', "without InstanceId"),
    ('{"Instances": [{"InstanceId": "i-1", "NetworkNodes": "nn"}]}', "NetworkNodes is not"),
    ('{"Instances": 3}', "no Instances list"),
    ('{"Instances": [', "invalid JSON"),
])
def test_aws_errors_name_the_place(text: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_aws_topology(text, "topo.json")
    assert message in str(caught.value) and "topo.json" in str(caught.value)


def test_aws_variants_read_alike() -> None:
    doc: dict[str, Any] = json.loads(AWS.read_text())
    expected = parse_aws_topology(AWS.read_text()).instances
    camel = json.dumps({"instances": [{k[0].lower() + k[1:]: v for k, v in i.items()}
                                      for i in doc["Instances"]]})
    pages = json.dumps({"Instances": doc["Instances"][:2]}) + "\n" + \
        json.dumps({"Instances": doc["Instances"][2:]})
    for text in (camel, pages, json.dumps(doc["Instances"]), json.dumps([doc])):
        assert parse_aws_topology(text).instances == expected


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


def test_the_service_builds_from_labels_and_captures(client: TestClient) -> None:
    names = _names(EKS)
    for name in names:
        answer = client.put(f"/v1/topology/hosts/{name}/nvidia-smi", content=NVSMI.read_text(),
                            headers=bearer())
        assert answer.status_code == 200 and not answer.json()["fabric_loaded"]
    answer = client.put("/v1/topology/k8s-nodes", content=EKS.read_text(), headers=bearer())
    assert answer.status_code == 200, answer.text
    assert answer.json()["fabric_loaded"]
    tiers = [client.get("/v1/topology/distance", headers=bearer(WORKER), params={
        "a": f"{names[0]}/gpu0", "b": f"{other}/gpu0"}).json()["tier"] for other in names[1:]]
    assert tiers == ["same_leaf", "same_pod", "same_zone"]
    recabled = _eks_with({"topology.k8s.aws/network-node-layer-3": "nn-2f8a6c1d4e7b09a32",
                          "topology.k8s.aws/network-node-layer-2": "nn-1c7e2a9b0d3f4e518"})
    change = client.put("/v1/topology/k8s-nodes", content=recabled,
                        headers=bearer()).json()["change"]
    assert change["changed"]
    assert client.get("/v1/topology/distance", headers=bearer(WORKER), params={
        "a": f"{names[0]}/gpu0", "b": f"{names[3]}/gpu0"}).json()["tier"] == "same_leaf"


def test_the_service_takes_instance_topology(client: TestClient) -> None:
    ids = [i.instance_id for i in parse_aws_topology(AWS.read_text()).instances]
    for instance in ids:
        assert client.put(f"/v1/topology/hosts/{instance}/nvidia-smi",
                          content=NVSMI.read_text(), headers=bearer()).status_code == 200
    answer = client.put("/v1/topology/aws-instance-topology", content=AWS.read_text(),
                        headers=bearer())
    assert answer.status_code == 200 and answer.json()["fabric_loaded"], answer.text
    tier = client.get("/v1/topology/distance", headers=bearer(WORKER),
                      params={"a": f"{ids[0]}/gpu0", "b": f"{ids[1]}/gpu0"}).json()["tier"]
    assert tier == "same_leaf"
    bad = client.put("/v1/topology/aws-instance-topology", content='{"Instances": 1}',
                     headers=bearer())
    assert bad.status_code == 422 and "no Instances list" in bad.json()["detail"]
