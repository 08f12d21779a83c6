"""Synthetic clusters for tests, demos and benchmarks.

``zones × pods (rows) × racks × hosts``, every host from one template. With
``rails=True`` each pod has one leaf per NIC index and NIC *i* of every host in the
pod lands on leaf *i* (a rail-optimised fabric); otherwise each rack has one ToR leaf.
Uplinks are sized from what hangs below them divided by the oversubscription ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

from topology.spec import (
    FabricSpec,
    HostSpec,
    LeafSpec,
    NicSpec,
    NvlinkDomainSpec,
    PodSpec,
    RackSpec,
    ZoneSpec,
)
from topology.templates import HostTemplate, get_template, host_from_template, load_templates
from topology.tiers import LinkConfig, load_links


@dataclass(frozen=True)
class SynthParams:
    """Shape of a synthetic cluster."""

    zones: int = 2
    pods_per_zone: int = 2
    racks_per_pod: int = 2
    hosts_per_rack: int = 4
    template: str = "hgx-h100"
    rails: bool = True
    leaf_oversubscription: float = 1.0
    pod_oversubscription: float = 2.0
    zone_oversubscription: float = 4.0
    nvlink_domain_per_rack: bool = False
    name: str = "synthetic"

    @property
    def hosts(self) -> int:
        """Total host count."""
        return self.zones * self.pods_per_zone * self.racks_per_pod * self.hosts_per_rack


def synth_cluster(params: SynthParams | None = None, links: LinkConfig | None = None,
                  templates: dict[str, HostTemplate] | None = None) -> FabricSpec:
    """Generate a synthetic FabricSpec."""
    params = params or SynthParams()
    template = get_template(templates or load_templates(), params.template)
    builder = _SynthBuilder(params, template)
    for z in range(params.zones):
        builder.add_zone(z)
    return FabricSpec(name=params.name, links=links or load_links(), **builder.parts())


class _SynthBuilder:
    def __init__(self, params: SynthParams, template: HostTemplate) -> None:
        self.p, self.t = params, template
        self.zones: list[ZoneSpec] = []
        self.pods: list[PodSpec] = []
        self.leaves: list[LeafSpec] = []
        self.racks: list[RackSpec] = []
        self.hosts: list[HostSpec] = []
        self.domains: list[NvlinkDomainSpec] = []

    def parts(self) -> dict[str, tuple[object, ...]]:
        return {"zones": tuple(self.zones), "pods": tuple(self.pods),
                "leaves": tuple(self.leaves), "racks": tuple(self.racks),
                "hosts": tuple(self.hosts), "nvlink_domains": tuple(self.domains)}

    def add_zone(self, z: int) -> None:
        zone = f"z{z}"
        pod_uplink = 0.0
        for p in range(self.p.pods_per_zone):
            pod_uplink += self.add_pod(zone, f"{zone}-p{p}")
        self.zones.append(ZoneSpec(name=zone, region="region-0",
                                   uplink_gbit=pod_uplink / self.p.zone_oversubscription))

    def add_pod(self, zone: str, pod: str) -> float:
        """Add a pod with its leaves, racks and hosts; return its uplink in Gb/s."""
        hosts_in_pod = self.p.racks_per_pod * self.p.hosts_per_rack
        leaf_uplinks = 0.0
        if self.p.rails:
            down = hosts_in_pod * self.t.nic_gbit
            for rail in range(self.t.nics):
                leaf_uplinks += self._leaf(f"{pod}-rail{rail}", pod, down, rail)
        for r in range(self.p.racks_per_pod):
            rack = f"{pod}-r{r}"
            self.racks.append(RackSpec(name=rack, pod=pod))
            if not self.p.rails:
                down = self.p.hosts_per_rack * self.t.nics * self.t.nic_gbit
                leaf_uplinks += self._leaf(f"{rack}-tor", pod, down, None)
            self._add_hosts(pod, rack, r)
        uplink = leaf_uplinks / self.p.pod_oversubscription
        self.pods.append(PodSpec(name=pod, zone=zone, uplink_gbit=uplink))
        return uplink

    def _leaf(self, name: str, pod: str, downlink_gbit: float, rail: int | None) -> float:
        uplink = downlink_gbit / self.p.leaf_oversubscription
        self.leaves.append(LeafSpec(name=name, pod=pod, uplink_gbit=uplink, rail=rail))
        return uplink

    def _add_hosts(self, pod: str, rack: str, r: int) -> None:
        names = [f"{rack}-h{h:02d}" for h in range(self.p.hosts_per_rack)]
        for h, name in enumerate(names):
            leaves = tuple(f"{pod}-rail{i}" if self.p.rails else f"{rack}-tor"
                           for i in range(self.t.nics))
            host = host_from_template(self.t, name, rack, leaves)
            self.hosts.append(host.model_copy(update={"nics": self._cabled(host, r, h)}))
        if self.p.nvlink_domain_per_rack:
            self.domains.append(NvlinkDomainSpec(
                name=f"{rack}-nvl", hosts=tuple(names),
                nvlinks_per_gpu=self.t.nvlink.links_per_gpu))

    def _cabled(self, host: HostSpec, r: int, h: int) -> tuple[NicSpec, ...]:
        """The host's NICs with their switch ports (SONiC names), each port used once:
        a rail leaf serves one NIC of every host of the pod, a ToR every NIC of a rack."""
        if self.p.rails:
            ports = [r * self.p.hosts_per_rack + h] * len(host.nics)
        else:
            ports = [h * len(host.nics) + i for i in range(len(host.nics))]
        return tuple(nic.model_copy(update={"port": f"Ethernet{port * 8}"})
                     for nic, port in zip(host.nics, ports, strict=True))
