"""Tests for the Kubernetes node-list parser (placement labels and GPU capacity)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from topology.errors import NotFoundError, ParseError
from topology.k8s import K8sNode, K8sNodes, looks_like_k8s_nodes, parse_k8s_nodes

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"
EKS_L1 = "nn-0b4f1a2c3d4e5f607"
GKE_BLOCK_1 = "6f1d0c3b9a8e4d27b5c1e0f2a3d4c5b6"
GKE_BLOCK_2 = "0e9c8b7a6f5d4c3b2a1908f7e6d5c4b3"
RACK_1 = "5e1a9c3b-7d2f-4b8e-a6c0-3f9d1e2b4a7c"
RACK_2 = "c2d8f4a6-1b3e-4c9a-8f7d-6e5b0a9c3d21"


def fixture(name: str) -> K8sNodes:
    return parse_k8s_nodes((FIXTURES / name).read_text(encoding="utf-8"), name)


def parse_error(text: str) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_k8s_nodes(text, "nodes.json")
    assert caught.value.location.source == "nodes.json"
    return caught.value


# -- builders -------------------------------------------------------------------------


def node(*, name: Any = "node-a", labels: Any = None, gpus: Any = None, kind: Any = "Node",
         status: bool = True) -> dict[str, Any]:
    """A Node object as kubectl prints it; ``gpus=None`` leaves the GPU capacity out."""
    obj: dict[str, Any] = {"apiVersion": "v1", "metadata": {"name": name}}
    if kind is not None:
        obj["kind"] = kind
    if labels is not None:
        obj["metadata"]["labels"] = labels
    if status:
        capacity: dict[str, Any] = {"cpu": "96", "memory": "1056276952Ki", "pods": "110"}
        if gpus is not None:
            capacity["nvidia.com/gpu"] = gpus
        obj["status"] = {"capacity": capacity}
    return obj


def node_list(*items: dict[str, Any], kind: str | None = "List") -> str:
    doc: dict[str, Any] = {"apiVersion": "v1", "items": list(items),
                           "metadata": {"resourceVersion": ""}}
    if kind is not None:
        doc["kind"] = kind
    return json.dumps(doc)


def one(**fields: Any) -> K8sNode:
    (found,) = parse_k8s_nodes(node_list(node(**fields))).nodes
    return found


# -- fixtures: EKS p5 --------------------------------------------------------------------


def test_eks_p5_exact_values() -> None:
    nodes = fixture("eks_p5.json")
    assert nodes.source == "eks_p5.json"
    names = [n.name for n in nodes.nodes]
    assert names == ["ip-10-1-45-12.us-east-2.compute.internal",
                     "ip-10-1-45-87.us-east-2.compute.internal",
                     "ip-10-1-46-3.us-east-2.compute.internal",
                     "ip-10-1-52-140.us-east-2.compute.internal"]
    assert [n.network_layers for n in nodes.nodes] == [
        [EKS_L1, "nn-1c7e2a9b0d3f4e518", "nn-2f8a6c1d4e7b09a32"],
        [EKS_L1, "nn-1c7e2a9b0d3f4e518", "nn-2f8a6c1d4e7b09a32"],
        [EKS_L1, "nn-1c7e2a9b0d3f4e518", "nn-2a0b5d3c6e9f18b47"],
        [EKS_L1, "nn-1d9f3b0c2e4a6f729", "nn-2c4e7a9b1d0f36c58"],
    ]
    first = nodes.nodes[0]
    assert first.model_dump(exclude={"labels", "network_layers"}) == {
        "name": names[0], "hostname": names[0], "region": "us-east-2", "zone": "us-east-2b",
        "gce_block": None, "gce_subblock": None, "gce_host": None, "nvlink_clique": None,
        "gpu_count": 8, "gpu_product": "NVIDIA-H100-80GB-HBM3",
        "provider_id": "aws:///us-east-2b/i-0a1b2c3d4e5f60718"}
    assert first.instance_id == "i-0a1b2c3d4e5f60718"
    assert first.labels["topology.k8s.aws/zone-id"] == "use2-az2"
    assert len(first.labels) == 24
    assert {n.gpu_count for n in nodes.nodes} == {8}


def test_eks_locality_paths_share_prefixes_by_network_layer() -> None:
    nodes = fixture("eks_p5.json")
    paths = [nodes.locality_path(n.name) for n in nodes.nodes]
    assert paths[0] == ["us-east-2", "us-east-2b", EKS_L1, "nn-1c7e2a9b0d3f4e518",
                        "nn-2f8a6c1d4e7b09a32"]
    assert paths[0] == paths[1]
    assert paths[2][:4] == paths[0][:4] and paths[2][4] != paths[0][4]
    assert paths[3][:3] == paths[0][:3] and paths[3][3] != paths[0][3]


def test_single_node_yaml() -> None:
    nodes = fixture("eks_p5_node.yaml")
    (found,) = nodes.nodes
    assert found == fixture("eks_p5.json").nodes[2]
    assert found.name == "ip-10-1-46-3.us-east-2.compute.internal"


# -- fixtures: GKE A3 ----------------------------------------------------------------------


def test_gke_a3_exact_values() -> None:
    nodes = fixture("gke_a3.json").nodes
    assert [(n.gce_block, n.gce_subblock, n.gce_host) for n in nodes] == [
        (GKE_BLOCK_1, "a1c2e3f4b5d6a7c8e9f0a1b2c3d4e5f6", "f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8"),
        (GKE_BLOCK_1, "a1c2e3f4b5d6a7c8e9f0a1b2c3d4e5f6", "8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d"),
        (GKE_BLOCK_1, "b7d8e9f0a1c2b3d4e5f6a7b8c9d0e1f2", "1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e"),
        (GKE_BLOCK_2, "c3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8", "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"),
    ]
    assert {(n.region, n.zone, n.gpu_count, n.gpu_product) for n in nodes} == {
        ("us-central1", "us-central1-a", 8, None)}
    assert nodes[0].name == "gke-llm-prod-a3mega-pool-7c1e2f9a-2k4m"
    assert nodes[0].hostname == nodes[0].name
    assert all(n.network_layers == [] and n.nvlink_clique is None for n in nodes)


def test_gke_locality_path() -> None:
    nodes = fixture("gke_a3.json")
    assert nodes.locality_path("gke-llm-prod-a3mega-pool-7c1e2f9a-t6v3") == [
        "us-central1", "us-central1-a", GKE_BLOCK_2, "c3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8",
        "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"]


def test_yaml_and_json_forms_agree() -> None:
    from_yaml, from_json = fixture("gke_a3.yaml"), fixture("gke_a3.json")
    assert from_yaml.nodes == from_json.nodes
    assert from_yaml.source == "gke_a3.yaml"


# -- fixtures: GB200 NVL72 and a mixed cluster ---------------------------------------------


def test_gb200_nvlink_cliques() -> None:
    nodes = fixture("gb200_nvl72.json").nodes
    assert [(n.name, n.nvlink_clique) for n in nodes] == [
        ("gb200-r01-t01", f"{RACK_1}.1"), ("gb200-r01-t02", f"{RACK_1}.1"),
        ("gb200-r02-t01", f"{RACK_2}.1"), ("gb200-r02-t02", f"{RACK_2}.1")]
    assert {(n.gpu_count, n.gpu_product) for n in nodes} == {(4, "NVIDIA-GB200")}
    assert all(n.region is None and n.zone is None for n in nodes)
    assert fixture("gb200_nvl72.json").locality_path("gb200-r02-t01") == []


def test_mixed_gpu_and_cpu_nodes() -> None:
    nodes = fixture("mixed_gpu_cpu.json")
    assert [(n.name, n.gpu_count, n.gpu_product) for n in nodes.nodes] == [
        ("k8s-cp-01", 0, None), ("k8s-cpu-01", 0, None),
        ("k8s-gpu-01", 4, "NVIDIA-L40S"), ("k8s-gpu-02", 4, "NVIDIA-L40S")]
    assert nodes.nodes[0].labels["node-role.kubernetes.io/control-plane"] == ""
    assert nodes.locality_path("k8s-cp-01") == ["fra", "fra-dc2-hall1"]
    assert nodes.locality_path("k8s-cpu-01") == []
    # Only the deprecated failure-domain labels: used as the fallback.
    assert nodes.locality_path("k8s-gpu-01") == ["fra", "fra-dc2-hall3"]
    # Both present and different: the current label wins.
    assert nodes.nodes[3].zone == "fra-dc2-hall3"
    assert nodes.nodes[3].labels["failure-domain.beta.kubernetes.io/zone"] == "fra-dc2-hall2"


# -- quirks ---------------------------------------------------------------------------------


def layer_labels(*numbers: int) -> dict[str, str]:
    return {f"topology.k8s.aws/network-node-layer-{i}": f"nn-{i}" for i in numbers}


@pytest.mark.parametrize(("numbers", "expected"), [
    ((1, 2, 3), ["nn-1", "nn-2", "nn-3"]),
    ((1, 2, 3, 4), ["nn-1", "nn-2", "nn-3", "nn-4"]),
    ((4, 3, 2, 1, 5, 6), ["nn-1", "nn-2", "nn-3", "nn-4", "nn-5", "nn-6"]),
    ((1, 2, 4), ["nn-1", "nn-2"]),
    ((2, 3), []),
    ((), []),
])
def test_aws_layers_any_depth_stop_at_first_missing(numbers: tuple[int, ...],
                                                    expected: list[str]) -> None:
    assert one(labels=layer_labels(*numbers)).network_layers == expected


def test_empty_layer_value_counts_as_missing() -> None:
    labels = {**layer_labels(1, 3), "topology.k8s.aws/network-node-layer-2": ""}
    assert one(labels=labels).network_layers == ["nn-1"]


@pytest.mark.parametrize(("labels", "region", "zone"), [
    ({"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z"}, "r", "z"),
    ({"failure-domain.beta.kubernetes.io/region": "old-r",
      "failure-domain.beta.kubernetes.io/zone": "old-z"}, "old-r", "old-z"),
    ({"topology.kubernetes.io/zone": "",
      "failure-domain.beta.kubernetes.io/zone": "old-z"}, None, "old-z"),
    ({"topology.kubernetes.io/zone": "z", "failure-domain.beta.kubernetes.io/zone": "old"},
     None, "z"),
    ({}, None, None),
])
def test_region_and_zone_fall_back_to_deprecated_labels(labels: dict[str, str],
                                                       region: str | None,
                                                       zone: str | None) -> None:
    found = one(labels=labels)
    assert (found.region, found.zone) == (region, zone)


@pytest.mark.parametrize(("gpus", "expected"), [("8", 8), (8, 8), ("0", 0), (None, 0), (" 4 ", 4)])
def test_gpu_capacity(gpus: Any, expected: int) -> None:
    assert one(gpus=gpus).gpu_count == expected


def test_node_without_status_or_labels() -> None:
    found = one(status=False)
    assert (found.gpu_count, found.labels, found.hostname) == (0, {}, None)
    assert parse_k8s_nodes(json.dumps({"kind": "Node", "metadata": {"name": "x",
                                                                    "labels": None},
                                       "status": None})).nodes[0].labels == {}


def test_gce_and_gpu_labels() -> None:
    found = one(labels={"cloud.google.com/gce-topology-block": "b",
                        "cloud.google.com/gce-topology-subblock": "s",
                        "cloud.google.com/gce-topology-host": "h",
                        "nvidia.com/gpu.clique": "uuid.7",
                        "nvidia.com/gpu.product": "NVIDIA-H200",
                        "kubernetes.io/hostname": "host-a"})
    assert (found.gce_block, found.gce_subblock, found.gce_host) == ("b", "s", "h")
    assert (found.nvlink_clique, found.gpu_product, found.hostname) == ("uuid.7", "NVIDIA-H200",
                                                                        "host-a")


def test_api_nodelist_items_carry_no_kind() -> None:
    text = node_list(node(name="a", kind=None), node(name="b", kind=None), kind="NodeList")
    assert [n.name for n in parse_k8s_nodes(text).nodes] == ["a", "b"]
    text = node_list(node(name="c", kind=None), kind=None)
    assert [n.name for n in parse_k8s_nodes(text).nodes] == ["c"]


@pytest.mark.parametrize("text", [
    node_list(), '{"apiVersion": "v1", "kind": "List", "items": null}',
    "apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  resourceVersion: \"\"\n",
])
def test_empty_lists(text: str) -> None:
    assert parse_k8s_nodes(text).nodes == []


def test_single_node_json() -> None:
    text = json.dumps(node(name="solo", gpus="2"))
    nodes = parse_k8s_nodes(text, "solo.json")
    assert [(n.name, n.gpu_count) for n in nodes.nodes] == [("solo", 2)]
    assert nodes.source == "solo.json"


def test_yaml_integer_capacity_and_byte_order_mark() -> None:
    text = "\ufeffkind: Node\nmetadata:\n  name: y1\nstatus:\n  capacity:\n    nvidia.com/gpu: 8\n"
    assert parse_k8s_nodes(text).nodes[0].gpu_count == 8


def test_locality_path_by_hostname_and_unknown_node() -> None:
    nodes = parse_k8s_nodes(node_list(node(name="ip-10-0-0-1.ec2.internal", labels={
        "kubernetes.io/hostname": "gpu-17", "topology.kubernetes.io/zone": "z1"})))
    assert nodes.locality_path("gpu-17") == ["z1"]
    assert nodes.node("ip-10-0-0-1.ec2.internal").hostname == "gpu-17"
    with pytest.raises(NotFoundError) as caught:
        nodes.locality_path("gpu-99")
    assert (caught.value.kind, caught.value.name) == ("node", "gpu-99")
    assert "ip-10-0-0-1.ec2.internal" in str(caught.value)


def test_locality_path_with_aws_and_gce_labels_orders_coarse_to_fine() -> None:
    nodes = parse_k8s_nodes(node_list(node(name="n", labels={
        **layer_labels(1, 2), "topology.kubernetes.io/region": "r",
        "cloud.google.com/gce-topology-host": "h"})))
    assert nodes.locality_path("n") == ["r", "nn-1", "nn-2", "h"]


def test_models_are_frozen() -> None:
    found = one()
    with pytest.raises(PydanticValidationError):
        found.name = "other"  # type: ignore[misc]
    with pytest.raises(PydanticValidationError):
        K8sNode(name="x", gpu_count=-1)


# -- errors ----------------------------------------------------------------------------------


def test_missing_name_names_the_item() -> None:
    items = [node(name=f"n{i}") for i in range(3)] + [node(name=None)]
    error = parse_error(node_list(*items))
    assert error.location.path == "items[3].metadata.name"
    assert "items[3].metadata.name: missing" in str(error)


@pytest.mark.parametrize(("name", "problem"), [("", "empty"), ("  ", "empty"),
                                               (7, "found a number")])
def test_bad_names(name: Any, problem: str) -> None:
    error = parse_error(node_list(node(name=name)))
    assert (error.location.path, error.message) == ("items[0].metadata.name", problem)


def test_missing_metadata_on_a_single_node() -> None:
    error = parse_error('{"kind": "Node", "apiVersion": "v1"}')
    assert error.location.path == "metadata.name"
    assert error.message == "missing"


def test_metadata_not_an_object() -> None:
    error = parse_error(node_list({"kind": "Node", "metadata": ["x"]}))
    assert error.location.path == "items[0].metadata"


def test_non_node_kind_in_list_is_named_with_its_path() -> None:
    items = [node(name="a"), {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}]
    error = parse_error(node_list(*items))
    assert error.location.path == "items[1].kind"
    assert "'Pod'" in error.message


@pytest.mark.parametrize(("text", "path"), [
    ('{"apiVersion": "v1", "kind": "PodList", "items": []}', "kind"),
    ('{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}', "kind"),
    ('{"apiVersion": "v1", "metadata": {"name": "p"}}', "kind"),
    ('[{"kind": "Node"}]', "$"),
    ("just some words", "$"),
    ("42", "$"),
    ('{"kind": "List", "items": {"a": 1}}', "items"),
    ('{"kind": "List", "items": ["node-a"]}', "items[0]"),
    ('{"kind": "Node", "metadata": {"name": "a"}, "status": []}', "status"),
    ('{"kind": "Node", "metadata": {"name": "a"}, "status": {"capacity": "8"}}',
     "status.capacity"),
])
def test_document_shape_errors(text: str, path: str) -> None:
    assert parse_error(text).location.path == path


@pytest.mark.parametrize("gpus", ["eight", "8.5", "-1", "1k", True, 8.0, -2, ["8"], ""])
def test_gpu_capacity_that_is_not_an_int(gpus: Any) -> None:
    error = parse_error(node_list(node(name="a"), node(name="b", gpus=gpus)))
    assert error.location.path == 'items[1].status.capacity["nvidia.com/gpu"]'
    assert "GPU capacity" in error.message


def test_label_value_that_is_not_a_string() -> None:
    text = ("apiVersion: v1\nkind: List\nitems:\n- kind: Node\n  metadata:\n    name: a\n"
            "    labels:\n      nvidia.com/gpu.present: true\n")
    error = parse_error(text)
    assert error.location.path == 'items[0].metadata.labels["nvidia.com/gpu.present"]'
    assert "quote" in (error.expected or "")


def test_duplicate_node_names() -> None:
    error = parse_error(node_list(node(name="a"), node(name="b"), node(name="a")))
    assert error.location.path == "items[2].metadata.name"
    assert "items[0].metadata.name" in error.message


def test_invalid_json_names_line_and_column() -> None:
    text = node_list(node(name="a"))[:-7]
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads(text)
    error = parse_error(text)
    assert error.location.line == reference.value.lineno
    assert f"column {reference.value.colno}" in error.message


def test_invalid_yaml_names_the_line() -> None:
    text = "apiVersion: v1\nkind: List\nitems:\n- kind: Node\n  metadata: {name: [a\n"
    error = parse_error(text)
    assert error.location.line is not None and error.location.line >= 5
    assert "invalid YAML" in error.message


def test_yaml_with_several_documents_is_an_error() -> None:
    error = parse_error("kind: Node\nmetadata: {name: a}\n---\nkind: Node\n")
    assert "invalid YAML" in error.message


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text", ["x" * 2_000_000, "[" * 200_000, "{" * 200_000,
                                  "- " * 200_000, "a:\n" + "  " * 100_000 + "b"])
def test_big_garbage_is_rejected(text: str) -> None:
    parse_error(text)


@pytest.mark.timeout(20)
def test_big_node_list() -> None:
    items = [node(name=f"gpu-{i:04d}", gpus="8", labels=layer_labels(1, 2, 3))
             for i in range(3000)]
    nodes = parse_k8s_nodes(node_list(*items))
    assert len(nodes.nodes) == 3000
    assert nodes.locality_path("gpu-2999") == ["nn-1", "nn-2", "nn-3"]


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["kind", "items", "metadata", "name", "labels",
                                       "status", "capacity", "nvidia.com/gpu", "Node",
                                       "List"]), inner, max_size=4),
    max_leaves=16)


@settings(max_examples=150, deadline=None)
@given(_VALUES)
def test_any_json_parses_or_raises_parse_error(doc: Any) -> None:
    with contextlib.suppress(ParseError):
        parse_k8s_nodes(json.dumps(doc))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="kind: Node\n-[]{}'\"&*!#", max_size=60))
def test_any_yaml_text_parses_or_raises_parse_error(text: str) -> None:
    with contextlib.suppress(ParseError):
        parse_k8s_nodes(text)


# -- sniffing ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eks_p5.json", "eks_p5_node.yaml", "gke_a3.yaml",
                                  "gb200_nvl72.json", "mixed_gpu_cpu.json"])
def test_looks_like_k8s_nodes_on_captures(name: str) -> None:
    assert looks_like_k8s_nodes((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("text", [
    "", '{"kind": "Pod"}', "kind: Deployment\n", '{"lldp": {"interface": {}}}',
    "lldp.eth0.via=LLDP\n", "kind: Nodes\n", yaml.safe_dump({"kind": "PodList"}),
])
def test_looks_like_k8s_nodes_rejects_other_inputs(text: str) -> None:
    assert not looks_like_k8s_nodes(text)
