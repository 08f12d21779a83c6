"""Where cloud hosts sit, from Kubernetes node labels and AWS instance topology.

A cloud host's place is a path of network nodes, top first, plus its zone:

* AWS: ``topology.k8s.aws/network-node-layer-1..N`` labels or ``describe-instance-topology``
  ``NetworkNodes`` (the API's answer wins when both are given and disagree);
* GKE: ``cloud.google.com/gce-topology-block`` then ``…-subblock``; ``…-host`` (the
  physical machine) is the host's rack, a failure domain shared by the VMs on it.

In the fabric the bottom node is the host's leaf (its ``uplink_leaf``: where its
traffic enters the network when no NIC-level capture says more) and the node above it
the pod; higher layers are not modelled separately (they price as the zone's spine).
Contradictions are warnings, never silent: a node under two parents, a node in two
zones, a host the labels and the API place differently, a layer label with a gap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from topology.aws_topology import AwsInstance, AwsTopology
from topology.k8s import AWS_LAYER, K8sNode, K8sNodes

_AWS_LAYER_KEY = re.compile(re.escape(AWS_LAYER.format("")) + r"(\d{1,2})")


@dataclass(frozen=True)
class CloudPlace:
    """A host's place in a cloud network: nodes top first, zone, region, rack."""

    host: str
    path: tuple[str, ...]
    zone: str | None = None
    region: str | None = None
    rack: str | None = None
    source: str = ""

    @property
    def leaf(self) -> str | None:
        """The network node right above the host."""
        return self.path[-1] if self.path else None

    @property
    def pod(self) -> str | None:
        """The node above the leaf, when known."""
        return self.path[-2] if len(self.path) >= 2 else None


@dataclass
class CloudPlaces:
    """Every host's place, and the contradictions found on the way."""

    places: dict[str, CloudPlace] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def host_of_node(node: K8sNode) -> str:
    """The fabric host name of a Kubernetes node: its hostname label, else its name."""
    return node.hostname or node.name


def cloud_places(k8s: K8sNodes | None, aws: Sequence[AwsTopology],
                 hosts: Iterable[str]) -> CloudPlaces:
    """Places of the given hosts from node labels and instance topology (module doc)."""
    known = set(hosts)
    result = CloudPlaces()
    nodes = list(k8s.nodes) if k8s else []
    for node in nodes:
        place = _from_labels(node, result.warnings)
        if place is not None and place.host in known:
            result.places[place.host] = place
    _apply_aws(aws, nodes, known, result)
    _check_tree(result)
    return result


def _from_labels(node: K8sNode, warnings: list[str]) -> CloudPlace | None:
    _check_layer_gaps(node, warnings)
    rack: str | None
    if node.network_layers:
        path: tuple[str, ...] = tuple(node.network_layers)
        rack = path[-1]
    else:
        path = tuple(p for p in (node.gce_block, node.gce_subblock) if p)
        rack = node.gce_host or (path[-1] if path else None)
    if not path and not node.zone:
        return None
    return CloudPlace(host_of_node(node), path, node.zone, node.region, rack,
                      f"node labels of {node.name}")


def _check_layer_gaps(node: K8sNode, warnings: list[str]) -> None:
    layers = sorted(int(m.group(1)) for key in node.labels
                    if (m := _AWS_LAYER_KEY.fullmatch(key)) and node.labels[key])
    if layers and layers != list(range(1, len(layers) + 1)):
        warnings.append(f"k8s node {node.name}: network-node-layer labels {layers} have a gap; "
                        f"only layers 1-{len(node.network_layers)} are used")


def _apply_aws(aws: Sequence[AwsTopology], nodes: Sequence[K8sNode], known: set[str],
               result: CloudPlaces) -> None:
    by_instance = {n.instance_id: host_of_node(n) for n in nodes if n.instance_id}
    for topology in aws:
        for instance in topology.instances:
            host = instance.instance_id if instance.instance_id in known \
                else by_instance.get(instance.instance_id)
            if host is None or host not in known:
                continue
            _place_instance(host, instance, topology.source, result)


def _place_instance(host: str, instance: AwsInstance, source: str, result: CloudPlaces) -> None:
    held = result.places.get(host)
    path = tuple(instance.network_nodes)
    if held is not None and held.path and held.path != path:
        result.warnings.append(
            f"host {host}: node labels place it under {'/'.join(held.path)}, "
            f"describe-instance-topology ({source}) under {'/'.join(path)}; the API's "
            "answer is used (labels may be stale)")
    zone = instance.availability_zone or (held.zone if held else None)
    if held is not None and held.zone and instance.availability_zone and \
            held.zone != instance.availability_zone:
        result.warnings.append(f"host {host}: zone label {held.zone}, "
                               f"describe-instance-topology {instance.availability_zone}")
    result.places[host] = CloudPlace(host, path, zone, held.region if held else None,
                                     path[-1], f"{source} ({instance.instance_id})")


def _check_tree(result: CloudPlaces) -> None:
    """A network node has one parent and one zone; say where the inputs disagree."""
    parent: dict[str, tuple[str, str]] = {}
    zone: dict[str, tuple[str, str]] = {}
    reported: set[tuple[str, str]] = set()
    for host, place in sorted(result.places.items()):
        for above, below in zip(place.path, place.path[1:], strict=False):
            _same(parent, below, above, host, "is under", result, reported)
        for node in place.path[1:]:
            if place.zone:
                _same(zone, node, place.zone, host, "is in zone", result, reported)


def _same(seen: dict[str, tuple[str, str]], node: str, value: str, host: str, what: str,
          result: CloudPlaces, reported: set[tuple[str, str]]) -> None:
    held = seen.setdefault(node, (value, host))
    if held[0] != value and (node, what) not in reported:
        reported.add((node, what))
        result.warnings.append(f"network node {node} {what} {held[0]} (host {held[1]}) and "
                               f"{value} (host {host}): contradictory cloud topology; "
                               f"host {host} keeps its own path")


def k8s_hosts(k8s: K8sNodes | None) -> Mapping[str, K8sNode]:
    """Kubernetes nodes with GPUs, by fabric host name."""
    return {host_of_node(n): n for n in (k8s.nodes if k8s else []) if n.gpu_count > 0}
