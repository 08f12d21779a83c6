"""An inventory derived from the captures, for fabrics built without one.

The hosts are those the per-host captures name, plus the Kubernetes nodes with GPUs
(with ``--template`` for those without a capture). A first build places them all in
one zone, one pod and a rack each; what it learns about locality then gives the
hierarchy of the real build:

* zone and region: the cloud's (node labels, instance topology), else ``default``;
* pod: the InfiniBand pod most of the host's NICs land in, else the cloud network node
  above the host's leaf, else one pod per zone (``<zone>-pod``);
* rack: the cloud's physical host or leaf node, else the host itself;
* InfiniBand leaves are declared in their own pods (their uplinks as measured).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from topology.cloud import k8s_hosts
from topology.inventory import (
    Defaults,
    HostEntry,
    Inventory,
    LeafEntry,
    PodEntry,
    RackEntry,
    ZoneEntry,
)
from topology.k8s import K8sNodes

if TYPE_CHECKING:
    from topology.builder import FabricBuilder

DEFAULT_ZONE = "default"


def host_names(parsed: Mapping[str, Mapping[str, Any]], k8s: K8sNodes | None,
               template: str | None) -> tuple[list[str], list[str]]:
    """(hosts to build, Kubernetes GPU nodes left out for want of a capture or template)."""
    names = dict.fromkeys(host for captures in parsed.values() for host in captures)
    skipped = []
    for host in k8s_hosts(k8s):
        if host in names:
            continue
        if template is None:
            skipped.append(host)
        else:
            names[host] = None
    return sorted(names), skipped


def flat_inventory(names: list[str], template: str | None) -> Inventory:
    """Every host in one zone and one pod, a rack each: the first build's inventory."""
    racks = tuple(RackEntry(name=host, hosts=(HostEntry(name=host),)) for host in names)
    return Inventory(name="cluster", defaults=Defaults(template=template), zones=(
        ZoneEntry(name=DEFAULT_ZONE, pods=(PodEntry(name=f"{DEFAULT_ZONE}-pod", racks=racks),)),))


def derive_inventory(first: FabricBuilder) -> Inventory:
    """The hierarchy the first build's inputs describe (module docstring)."""
    zones: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    regions: dict[str, str] = {}
    for name, host in first.hosts.items():
        place = first.places.places.get(name)
        zone = (place.zone if place else None) or DEFAULT_ZONE
        if place is not None and place.region:
            regions.setdefault(zone, place.region)
        pod = _ib_pod(first, host.nics) or (place.pod if place else None) or f"{zone}-pod"
        rack = (place.rack if place else None) or name
        zones[zone][pod][rack].append(name)
    ib_leaves = _ib_leaves(first)
    return Inventory(
        name="cluster", defaults=first.inv.defaults, zones=tuple(
            ZoneEntry(name=zone, region=regions.get(zone), pods=tuple(
                PodEntry(name=pod, leaves=tuple(LeafEntry(name=leaf)
                                                for leaf in ib_leaves.get(pod, [])),
                         racks=tuple(RackEntry(name=rack, hosts=tuple(
                             HostEntry(name=h) for h in hosts)) for rack, hosts in racks.items()))
                for pod, racks in pods.items()))
            for zone, pods in zones.items()))


def _ib_pod(first: FabricBuilder, nics: Any) -> str | None:
    if first.ib is None:
        return None
    pods = Counter(first.ib.pod_of_leaf[nic.leaf] for nic in nics
                   if nic.leaf in first.ib.pod_of_leaf)
    return pods.most_common(1)[0][0] if pods else None


def _ib_leaves(first: FabricBuilder) -> dict[str, list[str]]:
    leaves: dict[str, list[str]] = defaultdict(list)
    for leaf, pod in (first.ib.pod_of_leaf.items() if first.ib else []):
        leaves[pod].append(leaf)
    return leaves
