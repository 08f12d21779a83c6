"""Parser for Kubernetes node lists (``kubectl get nodes -o json|yaml``): placement labels.

What the fabric model takes from each node is its locality: region and zone
(``topology.kubernetes.io/*``, or the deprecated ``failure-domain.beta…`` labels),
the AWS network-node layers (``topology.k8s.aws/network-node-layer-1..N``, top layer
first), the GKE placement ids (``cloud.google.com/gce-topology-block|subblock|host``),
the NVIDIA multi-node NVLink clique (``nvidia.com/gpu.clique``), and its GPUs.

Accepted documents: ``kubectl``'s ``List`` of Nodes, the API's ``NodeList`` (whose
items carry no ``kind``) and a single ``Node``, as JSON or YAML.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from pydantic import BaseModel, Field

from topology.documents import FastSafeLoader
from topology.errors import Location, NotFoundError, ParseError
from topology.source import bounded_int

HOSTNAME = "kubernetes.io/hostname"
REGION = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
ZONE = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
AWS_LAYER = "topology.k8s.aws/network-node-layer-{}"
GCE_BLOCK = "cloud.google.com/gce-topology-block"
GCE_SUBBLOCK = "cloud.google.com/gce-topology-subblock"
GCE_HOST = "cloud.google.com/gce-topology-host"
NVLINK_CLIQUE = "nvidia.com/gpu.clique"
GPU_PRODUCT = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"

_LIST_KINDS = ("List", "NodeList")
_COUNT = re.compile(r"\d{1,6}")
_SNIFF_JSON = re.compile(r'"kind"\s*:\s*"(?:Node|NodeList)"')
_SNIFF_YAML = re.compile(r"^[\s-]*kind:\s*[\"']?(?:Node|NodeList)[\"']?\s*$", re.MULTILINE)


class K8sNode(BaseModel, frozen=True):
    """One Kubernetes node and the placement facts read from its labels and capacity."""

    name: str
    hostname: str | None = None
    region: str | None = None
    zone: str | None = None
    network_layers: list[str] = Field(default_factory=list,
                                      description="AWS network nodes, top layer first")
    gce_block: str | None = None
    gce_subblock: str | None = None
    gce_host: str | None = None
    nvlink_clique: str | None = Field(default=None, description="<ClusterUUID>.<CliqueID>")
    gpu_count: int = Field(default=0, ge=0)
    gpu_product: str | None = None
    provider_id: str | None = Field(default=None, description="spec.providerID")
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def instance_id(self) -> str | None:
        """The cloud instance behind the node: the last part of ``spec.providerID``
        (``aws:///us-east-2b/i-0a1b…`` → ``i-0a1b…``, ``gce://p/zone/name`` → ``name``)."""
        if not self.provider_id:
            return None
        return self.provider_id.rstrip("/").rsplit("/", 1)[-1] or None


class K8sNodes(BaseModel, frozen=True):
    """The nodes of one capture, in document order."""

    source: str
    nodes: list[K8sNode]

    def node(self, name: str) -> K8sNode:
        """The node called ``name`` (or, failing that, with that hostname label)."""
        for node in self.nodes:
            if node.name == name:
                return node
        for node in self.nodes:
            if node.hostname == name:
                return node
        known = ", ".join(node.name for node in self.nodes[:5]) or "none"
        raise NotFoundError("node", name, f"known nodes: {known}")

    def locality_path(self, node: str) -> list[str]:
        """Coarse-to-fine locality domains of a node, unknown levels left out.

        Region, zone, then the AWS network layers or the GCE block, sub-block and
        host. Two nodes are closer the longer the prefix their paths share.
        """
        found = self.node(node)
        path = [found.region, found.zone, *found.network_layers,
                found.gce_block, found.gce_subblock, found.gce_host]
        return [domain for domain in path if domain]


def looks_like_k8s_nodes(text: str) -> bool:
    """Cheap sniff: does ``text`` hold a Kubernetes Node or NodeList (JSON or YAML)?"""
    head = text[:65536]
    return bool(_SNIFF_JSON.search(head) or _SNIFF_YAML.search(head))


def parse_k8s_nodes(text: str, source: str = "<input>") -> K8sNodes:
    """Parse ``kubectl get nodes -o json`` (or ``-o yaml``, a NodeList or one Node)."""
    nodes: list[K8sNode] = []
    seen: dict[str, str] = {}
    for obj, path in _node_objects(_load(text, source), source):
        node = _node(obj, path, source)
        name_path = _join(path, "metadata.name")
        if node.name in seen:
            raise ParseError(f"duplicate node name {node.name!r} (first at {seen[node.name]})",
                             Location(source, path=name_path), "unique node names")
        seen[node.name] = name_path
        nodes.append(node)
    return K8sNodes(source=source, nodes=nodes)


def _load(text: str, source: str) -> Any:
    """JSON when it looks like JSON (exact line and column), YAML otherwise."""
    body = text.lstrip("\ufeff")
    if body.lstrip().startswith(("{", "[")):
        try:
            return json.loads(body, parse_int=bounded_int)
        except json.JSONDecodeError as exc:
            raise ParseError(f"invalid JSON: {exc.msg} (column {exc.colno})",
                             Location(source, exc.lineno), "kubectl -o json output") from exc
        except (RecursionError, ValueError) as exc:
            raise ParseError(f"invalid JSON: {exc}", Location(source),
                             "kubectl -o json output") from exc
    try:
        return yaml.load(body, Loader=FastSafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ParseError(f"invalid YAML: {exc.problem}{column}", Location(source, line),
                         "kubectl -o yaml output") from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise ParseError(f"invalid YAML: {exc}", Location(source),
                         "kubectl -o yaml output") from exc


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind_of(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             type(None): "null", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _node_objects(doc: Any, source: str) -> list[tuple[dict[str, Any], str]]:
    """(Node object, its path) for a Node, a NodeList or a List of Nodes."""
    expected = "a Node, NodeList or List of Nodes"
    if not isinstance(doc, dict):
        raise ParseError(f"found {_kind_of(doc)}", Location(source, path="$"), expected)
    kind = doc.get("kind")
    if kind == "Node":
        return [(doc, "")]
    if kind not in _LIST_KINDS and (kind is not None or "items" not in doc):
        found = f"kind {kind!r:.60}" if kind is not None else "no kind and no items"
        raise ParseError(f"{found}: not a Node or a list of Nodes",
                         Location(source, path="kind"), expected)
    items = doc.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise ParseError(f"found {_kind_of(items)}", Location(source, path="items"), "a list")
    return [_item(item, f"items[{i}]", source) for i, item in enumerate(items)]


def _item(item: Any, path: str, source: str) -> tuple[dict[str, Any], str]:
    """A list item that must be a Node (NodeList items carry no ``kind``)."""
    if not isinstance(item, dict):
        raise ParseError(f"found {_kind_of(item)}", Location(source, path=path), "a Node object")
    kind = item.get("kind")
    if kind not in (None, "Node"):
        raise ParseError(f"kind {kind!r:.60} is not a Node", Location(source, path=f"{path}.kind"),
                         "only Nodes (kubectl get nodes)")
    return item, path


def _mapping(value: Any, path: str, source: str) -> dict[str, Any]:
    """An optional object field (absent or null reads as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ParseError(f"found {_kind_of(value)}", Location(source, path=path), "an object")
    return value


def _node(obj: dict[str, Any], path: str, source: str) -> K8sNode:
    metadata = _mapping(obj.get("metadata"), _join(path, "metadata"), source)
    name = _name(metadata.get("name"), _join(path, "metadata.name"), source)
    labels = _labels(metadata.get("labels"), _join(path, "metadata.labels"), source)
    spec = _mapping(obj.get("spec"), _join(path, "spec"), source)
    provider = spec.get("providerID")
    status = _mapping(obj.get("status"), _join(path, "status"), source)
    capacity = _mapping(status.get("capacity"), _join(path, "status.capacity"), source)
    gpu_path = f'{_join(path, "status.capacity")}["{GPU_RESOURCE}"]'
    return K8sNode(
        name=name,
        hostname=labels.get(HOSTNAME) or None,
        region=_first_label(labels, REGION),
        zone=_first_label(labels, ZONE),
        network_layers=_aws_layers(labels),
        gce_block=labels.get(GCE_BLOCK) or None,
        gce_subblock=labels.get(GCE_SUBBLOCK) or None,
        gce_host=labels.get(GCE_HOST) or None,
        nvlink_clique=labels.get(NVLINK_CLIQUE) or None,
        gpu_count=_gpu_count(capacity.get(GPU_RESOURCE), gpu_path, source),
        gpu_product=labels.get(GPU_PRODUCT) or None,
        provider_id=provider.strip() or None if isinstance(provider, str) else None,
        labels=labels,
    )


def _name(value: Any, path: str, source: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    problem = "missing" if value is None else "empty" if isinstance(value, str) else (
        f"found {_kind_of(value)}")
    raise ParseError(problem, Location(source, path=path), "the node's name")


def _labels(value: Any, path: str, source: str) -> dict[str, str]:
    """Labels as strings; YAML turns unquoted ``true`` or ``8`` into other types."""
    labels = _mapping(value, path, source)
    for key, label in labels.items():
        if not isinstance(key, str) or not isinstance(label, str):
            raise ParseError(f"found {_kind_of(label)}", Location(source, path=f'{path}["{key}"]'),
                             "a string label value (quote it in YAML)")
    return labels


def _first_label(labels: dict[str, str], keys: tuple[str, ...]) -> str | None:
    """The first non-empty label among ``keys`` (current name before deprecated)."""
    return next((labels[key] for key in keys if labels.get(key)), None)


def _aws_layers(labels: dict[str, str]) -> list[str]:
    """``network-node-layer-1..N`` in order, stopping at the first missing layer."""
    layers: list[str] = []
    while value := labels.get(AWS_LAYER.format(len(layers) + 1)):
        layers.append(value)
    return layers


def _gpu_count(value: Any, path: str, source: str) -> int:
    """``nvidia.com/gpu`` capacity: a quantity string (``"8"``) or an int from YAML."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and _COUNT.fullmatch(value.strip()):
        return int(value)
    shown = repr(value)[:40] if isinstance(value, str | int | float) else _kind_of(value)
    raise ParseError(f"GPU capacity {shown} is not a whole number", Location(source, path=path),
                     "a non-negative integer quantity")
