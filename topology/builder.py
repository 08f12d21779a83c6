"""The fabric builder: an inventory's hierarchy filled in from every capture.

Order: the inventory's zones, pods, leaves and racks; each host merged from its
template and captures (:mod:`topology.host_merge`; RDMA device captures give the
device → interface map LLDP needs and the GUIDs InfiniBand matching needs); Kubernetes
labels checked against it; InfiniBand subnets place NICs on switch ports
(:mod:`topology.ib_fabric`); cloud network nodes place hosts that nothing else places
(:mod:`topology.cloud`); what is still unplaced gets an unknown-uplink leaf; then
leaves, rails (and rail breaks, :mod:`topology.cabling`) and uplinks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topology.aws_topology import AwsTopology, parse_aws_topology
from topology.cabling import (
    Claim,
    ClaimRegistry,
    discover_rails,
    normal_guid,
    rail_breaks,
    rail_keys,
)
from topology.cloud import CloudPlaces, cloud_places, host_of_node
from topology.documents import validate
from topology.errors import NotFoundError
from topology.host_merge import HostInputs, MergeReport, merge_host
from topology.ib_fabric import HostNics, IbTopology, analyse, place_nics
from topology.iblinkinfo import parse_subnet_capture
from topology.ibnetdiscover import IbFabric
from topology.inventory import HostEntry, Inventory, PodEntry, RackEntry, ZoneEntry
from topology.k8s import K8sNodes, parse_k8s_nodes
from topology.lldp import parse_lldp
from topology.nccl import parse_nccl_xml
from topology.nvsmi import parse_nvidia_smi
from topology.rdma_devices import RdmaDevices, parse_rdma_devices
from topology.source import read_capture
from topology.spec import (
    UNKNOWN_UPLINK_PREFIX,
    FabricSpec,
    HostSpec,
    LeafSpec,
    NicSpec,
    NvlinkDomainSpec,
    PodSpec,
    RackSpec,
    ZoneSpec,
)
from topology.templates import HostTemplate, load_templates
from topology.tiers import LinkConfig, load_links

if TYPE_CHECKING:
    from topology.build import Captures


@dataclass(frozen=True)
class Merged:
    """One host as merged from its captures, with what the merge reported."""

    host: HostSpec
    rack_leaves: tuple[str | None, ...]
    report: MergeReport


class FabricBuilder:
    """Builds one FabricSpec from an inventory and captures (see the module docstring)."""

    def __init__(self, inventory: Inventory, captures: Captures,
                 merged: dict[str, Merged] | None = None) -> None:
        self.inv = inventory
        #: Hosts merged by an earlier build over the same captures (reused, rack aside).
        self.merged: dict[str, Merged] = merged if merged is not None else {}
        self.captures = captures
        self.base = Path(inventory.base_dir)
        self.templates = {**load_templates(), **inventory.templates}
        self.links = _links(inventory)
        self.report = MergeReport()
        self.racks: list[RackSpec] = []
        self.rack_pod: dict[str, str] = {}
        self.hosts: dict[str, HostSpec] = {}
        self.explicit_gbit: set[str] = set()
        self.guids: dict[str, dict[str, str]] = {}
        self.leaf_pod: dict[str, str] = {}
        self.leaf_entries: dict[str, tuple[float | None, float | None]] = {}
        self.claims = ClaimRegistry()
        self.ib: IbTopology | None = None
        self.places = CloudPlaces()
        self.k8s_nodes: K8sNodes | None = None

    def build(self) -> FabricSpec:
        """The fabric, with every warning and conflict found."""
        for zone in self.inv.zones:
            self._zone(zone)
        self._check_captures_named_hosts()
        self.k8s_nodes = self._k8s()
        domains = self._domains(self.k8s_nodes)
        self._infiniband()
        self._cloud()
        self._unknown_uplinks()
        self.report.conflicts += self.claims.conflicts()
        leaves = self._leaves()
        spec = FabricSpec(
            name=self.inv.name, links=self.links, zones=self._zones(),
            pods=self._pods(leaves), leaves=tuple(leaves), racks=tuple(self.racks),
            hosts=tuple(self.hosts.values()), nvlink_domains=domains,
            warnings=tuple(self.report.warnings), conflicts=tuple(self.report.conflicts))
        breaks = [str(found) for found in rail_breaks(spec)]
        return spec.model_copy(update={"warnings": (*spec.warnings, *breaks)}) if breaks \
            else spec

    def locality_sources(self) -> str:
        """Which inputs said anything about locality (for a derived inventory's note)."""
        found = [name for name, present in (
            ("the InfiniBand subnet", self.ib is not None),
            ("cloud network nodes", any(p.path for p in self.places.places.values())),
            ("zone labels", any(p.zone for p in self.places.places.values())))
            if present]
        return ", ".join(found) or "nothing (one zone, one pod, a rack per host)"

    # -- hierarchy -----------------------------------------------------------------------
    def _zone(self, zone: ZoneEntry) -> None:
        for pod in zone.pods:
            for leaf in pod.leaves:
                self._declare_leaf(leaf.name, pod.name, leaf.uplink_gbit, leaf.oversubscription)
            for rack in pod.racks:
                self._rack(pod, rack)

    def _declare_leaf(self, name: str, pod: str, uplink: float | None,
                      oversub: float | None) -> None:
        if name in self.leaf_pod and self.leaf_pod[name] != pod:
            self.report.conflicts.append(f"leaf {name} is declared in pods "
                                         f"{self.leaf_pod[name]} and {pod}")
        self.leaf_pod.setdefault(name, pod)
        self.leaf_entries.setdefault(name, (uplink, oversub))

    def _rack(self, pod: PodEntry, rack: RackEntry) -> None:
        self.racks.append(RackSpec(name=rack.name, pod=pod.name))
        self.rack_pod.setdefault(rack.name, pod.name)
        leaves: tuple[str | None, ...] = rack.rails or ((rack.leaf,) if rack.leaf else ())
        for leaf in leaves:
            if leaf is not None and leaf not in self.leaf_pod:
                self._declare_leaf(leaf, pod.name, None, None)
        for entry in rack.all_hosts():
            self._host(entry, rack.name, leaves)

    # -- hosts -------------------------------------------------------------------------
    def _host(self, entry: HostEntry, rack: str, leaves: tuple[str | None, ...]) -> None:
        if entry.name in self.hosts:
            self.report.conflicts.append(
                f"host {entry.name} is listed twice (racks {self.hosts[entry.name].rack} and "
                f"{rack}); the first is kept")
            return
        rdma: RdmaDevices | None = self._parse(entry.name, "rdma", entry.rdma,
                                               parse_rdma_devices)
        inputs = HostInputs(
            name=entry.name, rack=rack, template=self._template(entry),
            nic_gbit=entry.nic_gbit or self.inv.defaults.nic_gbit, rack_leaves=leaves,
            nvsmi=self._parse(entry.name, "nvsmi", entry.nvsmi, parse_nvidia_smi),
            nccl=self._parse(entry.name, "nccl", entry.nccl, parse_nccl_xml),
            lldp=self._parse(entry.name, "lldp", entry.lldp, parse_lldp),
            netdevs=self._netdevs(entry, rdma))
        host = self._merge(inputs)
        self._claim(inputs, host, rdma)
        if entry.gpu_type:
            host = host.model_copy(update={"gpu_type": entry.gpu_type})
        if entry.nic_gbit:
            self.explicit_gbit.add(entry.name)
            host = host.model_copy(update={"nics": tuple(
                n.model_copy(update={"gbit": entry.nic_gbit}) for n in host.nics)})
        if rdma is not None:
            host = host.model_copy(update={"sources": (*host.sources, rdma.source)})
        self.hosts[entry.name] = host

    def _merge(self, inputs: HostInputs) -> HostSpec:
        """Merge one host, or reuse an earlier build's merge of the same inputs."""
        held = self.merged.get(inputs.name)
        if held is None or held.rack_leaves != inputs.rack_leaves:
            report = MergeReport()
            held = Merged(merge_host(inputs, report), inputs.rack_leaves, report)
            self.merged[inputs.name] = held
        self.report.warnings += held.report.warnings
        self.report.conflicts += held.report.conflicts
        return held.host.model_copy(update={"rack": inputs.rack})

    def _netdevs(self, entry: HostEntry, rdma: RdmaDevices | None) -> dict[str, str]:
        """The inventory's ``netdevs`` over the RDMA capture's; disagreements warned."""
        found = rdma.netdevs() if rdma is not None else {}
        for device, netdev in entry.netdevs.items():
            if found.get(device, netdev) != netdev:
                self.report.warnings.append(
                    f"host {entry.name}: the inventory maps {device} to {netdev}, the RDMA "
                    f"capture to {found[device]} (the inventory is used)")
        return {**found, **entry.netdevs}

    def _claim(self, inputs: HostInputs, host: HostSpec, rdma: RdmaDevices | None) -> None:
        """Record the switch ports and NIC GUIDs this host's captures claim."""
        devices = {nic.device for nic in host.nics}
        to_device = {netdev: dev for dev, netdev in inputs.netdevs.items()}
        for seen in inputs.lldp.neighbors if inputs.lldp else []:
            switch, port = seen.chassis_name or seen.chassis_id, seen.port_id
            if switch and port:
                nic = to_device.get(seen.interface, seen.interface)
                self.claims.port(switch, port, Claim(
                    host.name, seen.interface, nic if nic in devices else None,
                    inputs.lldp.source if inputs.lldp else ""))
        guids: dict[str, str] = {}
        for net in inputs.nccl.nets if inputs.nccl else []:
            if net.guid:
                guids[net.guid] = net.name
                self.claims.guid(net.guid, Claim(host.name, net.name, net.name,
                                                 inputs.nccl.source if inputs.nccl else ""))
        for guid, device in (rdma.guids() if rdma else {}).items():
            guids[guid] = device
            self.claims.guid(guid, Claim(host.name, device, device, rdma.source if rdma else ""))
        self.guids[host.name] = {normal_guid(g): d for g, d in guids.items()}

    def _template(self, entry: HostEntry) -> HostTemplate | None:
        name = entry.template or self.inv.defaults.template
        if name is None:
            return None
        if name not in self.templates:
            raise NotFoundError("host template", name,
                                f"host {entry.name}; known: {', '.join(sorted(self.templates))}")
        return self.templates[name]

    def _parse(self, host: str, kind: str, named: str | None,
               parser: Callable[[str, str], Any]) -> Any:
        held = self.captures.parsed.get(kind, {}).get(host)
        if held is not None:
            return held
        override: dict[str, Path] = getattr(self.captures, kind)
        path = override.get(host) or (self.base / named if named else None)
        if path is None:
            return None
        return parser(read_capture(path), str(path))

    def _check_captures_named_hosts(self) -> None:
        for kind in ("nvsmi", "lldp", "nccl", "rdma"):
            for host in [*getattr(self.captures, kind), *self.captures.parsed.get(kind, {})]:
                if host not in self.hosts:
                    raise NotFoundError("host", host, f"--{kind} names a host that is not "
                                        "in the inventory")

    # -- InfiniBand and cloud placement -------------------------------------------------
    def _cluster_captures(self, files: list[Path], named: tuple[str, ...], parsed: list[Any],
                          parser: Callable[[str, str], Any]) -> list[Any]:
        paths = [*files, *(self.base / name for name in named)]
        return [*parsed, *(parser(read_capture(path), str(path)) for path in paths)]

    def _infiniband(self) -> None:
        fabrics: list[IbFabric] = self._cluster_captures(
            self.captures.ibnetdiscover, self.inv.ibnetdiscover, self.captures.ib_parsed,
            parse_subnet_capture)
        if not fabrics:
            return
        self.ib = analyse(fabrics)
        self.ib.adopt_names(self.leaf_pod)
        hosts = [HostNics(h.name, tuple(n.device for n in h.nics), self.guids.get(h.name, {}))
                 for h in self.hosts.values()]
        placement = place_nics(self.ib, hosts)
        self.report.warnings += placement.warnings
        self.report.conflicts += placement.conflicts
        updates: dict[str, dict[str, NicSpec]] = defaultdict(dict)
        for (host, device), place in placement.nics.items():
            nic = self.hosts[host].nic(device)
            if nic.leaf is not None and nic.leaf != place.leaf:
                self.report.conflicts.append(
                    f"host {host}: NIC {device} is on {place.leaf} port {place.port} per "
                    f"ibnetdiscover, but LLDP or the inventory places it on {nic.leaf} "
                    "(ibnetdiscover is used)")
            gbit = place.gbit if place.gbit and host not in self.explicit_gbit else nic.gbit
            updates[host][device] = nic.model_copy(update={"leaf": place.leaf,
                                                           "port": place.port, "gbit": gbit})
            self.claims.port(place.leaf, place.port, Claim(host, device, device, "ibnetdiscover"))
        for host, nics in updates.items():
            spec = self.hosts[host]
            self.hosts[host] = spec.model_copy(update={
                "nics": tuple(nics.get(n.device, n) for n in spec.nics),
                "sources": (*spec.sources, *self.ib.sources)})

    def _cloud(self) -> None:
        aws: list[AwsTopology] = self._cluster_captures(
            self.captures.aws_topology, self.inv.aws_topology, self.captures.aws_parsed,
            parse_aws_topology)
        self.places = cloud_places(self.k8s_nodes, aws, self.hosts)
        self.report.warnings += self.places.warnings
        for name, place in self.places.places.items():
            host = self.hosts[name]
            leaf = place.leaf
            if leaf is None or (host.nics and all(n.leaf for n in host.nics)):
                continue
            pod = self.rack_pod[host.rack]
            if self.leaf_pod.get(leaf, pod) != pod:
                self.report.warnings.append(
                    f"host {name}: cloud network node {leaf} is in pod {self.leaf_pod[leaf]}, "
                    f"the host's rack in pod {pod}; the host keeps an unknown uplink")
                continue
            self._declare_leaf(leaf, pod, None, None)
            self.hosts[name] = host.model_copy(update={"uplink_leaf": leaf})

    def _unknown_uplinks(self) -> None:
        """Give every host with a NIC (or no NIC) that no input places a leaf of its own.

        Nothing says which switch those NICs reach, so no two such hosts are assumed to
        share one: their transfers are priced through the pod's aggregation layer
        (tier same_pod) and the invented leaf's uplink is the host's own line rate.
        """
        unplaced = []
        for name, host in self.hosts.items():
            if host.uplink_leaf is not None:
                continue
            missing = [nic for nic in host.nics if nic.leaf is None]
            if host.nics and not missing:
                continue
            leaf = f"{UNKNOWN_UPLINK_PREFIX}{name}"
            gbit = sum(nic.gbit for nic in missing) or self.inv.defaults.nic_gbit
            self._declare_leaf(leaf, self.rack_pod[host.rack], gbit, None)
            self.hosts[name] = host.model_copy(update={"uplink_leaf": leaf})
            unplaced.append(f"{name} ({_nic_list(host, missing)})")
        if unplaced:
            self.report.warnings.append(
                f"{len(unplaced)} host(s) have no switch information (no LLDP, ibnetdiscover, "
                f"rack leaf or cloud network labels): {_first(unplaced)}; each is priced "
                f"through a leaf of its own ({UNKNOWN_UPLINK_PREFIX}HOST), so transfers "
                "between them cross the pod aggregation (tier same_pod)")

    # -- switch levels ----------------------------------------------------------------------
    def _leaves(self) -> list[LeafSpec]:
        """Every leaf with its pod, uplink and rail (discovered from the NICs' rails)."""
        attached: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
        line_rate: dict[str, float] = defaultdict(float)
        for host in self.hosts.values():
            keys = rail_keys(host)
            for nic in host.nics:
                if nic.leaf is not None:
                    attached[nic.leaf].append((host.name, keys.get(nic.device)))
                    line_rate[nic.leaf] += nic.gbit
        discovered = [leaf for leaf in attached if leaf not in self.leaf_pod]
        for leaf in discovered:
            self._declare_leaf(leaf, self.rack_pod[self.hosts[attached[leaf][0][0]].rack],
                               None, None)
        if discovered:
            self.report.warnings.append(
                f"{len(discovered)} leaf switch(es) were discovered (LLDP, ibnetdiscover) and "
                f"placed in the pod of the first host on them: {_first(discovered)} "
                "(declare them in the inventory to choose)")
        rails = discover_rails(attached)
        return [self._leaf_spec(name, line_rate[name], rails.get(name))
                for name in self.leaf_pod]

    def _leaf_spec(self, name: str, below_gbit: float, rail: int | None) -> LeafSpec:
        uplink, oversub = self.leaf_entries.get(name, (None, None))
        if uplink is None and oversub is not None:
            uplink = below_gbit / oversub or None
        if uplink is None and oversub is None and self.ib is not None:
            uplink = self.ib.leaf_uplink_gbit.get(name)
        return LeafSpec(name=name, pod=self.leaf_pod[name], uplink_gbit=uplink, rail=rail)

    def _pods(self, leaves: list[LeafSpec]) -> tuple[PodSpec, ...]:
        pods = []
        for zone in self.inv.zones:
            for pod in zone.pods:
                uplink = pod.uplink_gbit
                below = [leaf.uplink_gbit for leaf in leaves if leaf.pod == pod.name]
                if uplink is None and pod.oversubscription and all(below) and below:
                    uplink = sum(b for b in below if b) / pod.oversubscription
                if uplink is None and pod.oversubscription is None and self.ib is not None:
                    uplink = self.ib.pod_uplink_gbit.get(pod.name)
                pods.append(PodSpec(name=pod.name, zone=zone.name, uplink_gbit=uplink))
        return tuple(pods)

    def _zones(self) -> tuple[ZoneSpec, ...]:
        return tuple(ZoneSpec(name=z.name, region=z.region, uplink_gbit=z.uplink_gbit,
                              uplink_latency_us=z.uplink_latency_us) for z in self.inv.zones)

    # -- NVLink domains and labels --------------------------------------------------------------
    def _domains(self, k8s: K8sNodes | None) -> tuple[NvlinkDomainSpec, ...]:
        domains = {d.name: NvlinkDomainSpec(name=d.name, hosts=d.hosts,
                                            nvlinks_per_gpu=d.nvlinks_per_gpu)
                   for d in self.inv.nvlink_domains}
        member = {h: d.name for d in domains.values() for h in d.hosts}
        for host in member:
            if host not in self.hosts:
                raise NotFoundError("host", host, "named by an nvlink_domains entry")
        for clique, hosts in _cliques(k8s, self.hosts).items():
            if any(h in member for h in hosts):
                continue
            domains[clique] = NvlinkDomainSpec(name=clique, hosts=tuple(sorted(hosts)))
        return tuple(domains.values())

    def _k8s(self) -> K8sNodes | None:
        nodes, path = self.captures.k8s_parsed, self.captures.k8s_nodes
        if nodes is None and path is not None:
            nodes = parse_k8s_nodes(read_capture(path), str(path))
        if nodes is None:
            return None
        zone_of = {z.name: z.name for z in self.inv.zones}
        pod_zone = {p.name: z.name for z in self.inv.zones for p in z.pods}
        outside = []
        for node in nodes.nodes:
            name = host_of_node(node)
            if name not in self.hosts:
                outside.append(node.name)
                continue
            zone = zone_of[pod_zone[self.rack_pod[self.hosts[name].rack]]]
            if node.zone and node.zone != zone:
                self.report.conflicts.append(
                    f"host {name}: label topology.kubernetes.io/zone={node.zone}, inventory "
                    f"zone {zone}")
            if node.gpu_count and node.gpu_count != len(self.hosts[name].gpus):
                self.report.conflicts.append(
                    f"host {name}: k8s reports {node.gpu_count} GPUs, the fabric "
                    f"{len(self.hosts[name].gpus)}")
        if outside:
            self.report.warnings.append(f"{len(outside)} k8s node(s) are not in the fabric: "
                                        f"{_first(outside)}")
        return nodes


def _nic_list(host: HostSpec, nics: list[NicSpec]) -> str:
    if not host.nics:
        return "no NIC"
    if len(nics) == len(host.nics):
        return f"all {len(nics)} NICs"
    return ", ".join(nic.device for nic in nics)


def _first(items: list[str], shown: int = 5) -> str:
    """The first few items of a long list, and how many more there are."""
    head = ", ".join(items[:shown])
    return head if len(items) <= shown else f"{head} … and {len(items) - shown} more"


def _cliques(k8s: K8sNodes | None, hosts: dict[str, HostSpec]) -> dict[str, list[str]]:
    cliques: dict[str, list[str]] = defaultdict(list)
    for node in k8s.nodes if k8s else []:
        if node.nvlink_clique and host_of_node(node) in hosts:
            cliques[f"clique-{node.nvlink_clique}"].append(host_of_node(node))
    return {k: v for k, v in cliques.items() if len(v) > 1}


def _links(inventory: Inventory) -> LinkConfig:
    base = load_links()
    if not inventory.links:
        return base
    merged = base.model_dump()
    for key, value in inventory.links.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return validate(LinkConfig, merged, "inventory links")


def _deep_merge(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    out = dict(a)
    for key, value in b.items():
        old = out.get(key)
        out[key] = _deep_merge(old, value) if isinstance(old, dict) and isinstance(value, dict) \
            else value
    return out
