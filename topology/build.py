"""Building a FabricSpec from an inventory, per-host captures and Kubernetes node labels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topology.cabling import Claim, ClaimRegistry
from topology.documents import validate
from topology.errors import ConflictError, NotFoundError
from topology.host_merge import HostInputs, MergeReport, merge_host
from topology.inventory import HostEntry, Inventory, PodEntry, RackEntry, ZoneEntry
from topology.k8s import K8sNodes, parse_k8s_nodes
from topology.lldp import parse_lldp
from topology.nccl import parse_nccl_xml
from topology.nvsmi import parse_nvidia_smi
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


@dataclass
class Captures:
    """Per-host captures that override the inventory's: files (the CLI's flags) or
    already-parsed captures (``parsed[kind][host]``, e.g. feeds posted over HTTP)."""

    nvsmi: dict[str, Path] = field(default_factory=dict)
    lldp: dict[str, Path] = field(default_factory=dict)
    nccl: dict[str, Path] = field(default_factory=dict)
    k8s_nodes: Path | None = None
    parsed: dict[str, dict[str, Any]] = field(default_factory=dict)
    k8s_parsed: K8sNodes | None = None


def build_fabric(inventory: Inventory, captures: Captures | None = None,
                 keep_going: bool = False) -> FabricSpec:
    """Build the fabric; conflicts raise :class:`ConflictError` unless ``keep_going``."""
    builder = _FabricBuilder(inventory, captures or Captures())
    spec = builder.build()
    if spec.conflicts and not keep_going:
        raise ConflictError(f"{len(spec.conflicts)} conflict(s) between inputs:\n  - "
                            + "\n  - ".join(spec.conflicts))
    return spec


class _FabricBuilder:
    def __init__(self, inventory: Inventory, captures: Captures) -> None:
        self.inv = inventory
        self.captures = captures
        self.base = Path(inventory.base_dir)
        self.templates = {**load_templates(), **inventory.templates}
        self.links = _links(inventory)
        self.report = MergeReport()
        self.zones: list[ZoneSpec] = []
        self.pods: list[PodSpec] = []
        self.racks: list[RackSpec] = []
        self.hosts: dict[str, HostSpec] = {}
        self.leaf_pod: dict[str, str] = {}
        self.leaf_entries: dict[str, tuple[float | None, float | None]] = {}
        self.pod_entries: dict[str, PodEntry] = {}
        self.zone_entries: dict[str, ZoneEntry] = {}
        self.claims = ClaimRegistry()

    def build(self) -> FabricSpec:
        for zone in self.inv.zones:
            self._zone(zone)
        self._check_captures_named_hosts()
        k8s = self._k8s()
        domains = self._domains(k8s)
        self._unknown_uplinks()
        self.report.conflicts += self.claims.conflicts()
        leaves = self._leaves()
        return FabricSpec(
            name=self.inv.name, links=self.links, zones=self._sized_zones(),
            pods=self._sized_pods(leaves), leaves=tuple(leaves), racks=tuple(self.racks),
            hosts=tuple(self.hosts.values()), nvlink_domains=domains,
            warnings=tuple(self.report.warnings), conflicts=tuple(self.report.conflicts))

    # -- hierarchy -----------------------------------------------------------------------
    def _zone(self, zone: ZoneEntry) -> None:
        self.zone_entries[zone.name] = zone
        for pod in zone.pods:
            self.pod_entries[pod.name] = pod
            for leaf in pod.leaves:
                self._declare_leaf(leaf.name, pod.name, leaf.uplink_gbit, leaf.oversubscription)
            for rack in pod.racks:
                self._rack(zone, pod, rack)

    def _declare_leaf(self, name: str, pod: str, uplink: float | None,
                      oversub: float | None) -> None:
        if name in self.leaf_pod and self.leaf_pod[name] != pod:
            self.report.conflicts.append(f"leaf {name} is declared in pods "
                                         f"{self.leaf_pod[name]} and {pod}")
        self.leaf_pod.setdefault(name, pod)
        self.leaf_entries.setdefault(name, (uplink, oversub))

    def _rack(self, zone: ZoneEntry, pod: PodEntry, rack: RackEntry) -> None:
        self.racks.append(RackSpec(name=rack.name, pod=pod.name))
        leaves: tuple[str | None, ...] = rack.rails or ((rack.leaf,) if rack.leaf else ())
        for leaf in leaves:
            if leaf is not None and leaf not in self.leaf_pod:
                self._declare_leaf(leaf, pod.name, None, None)
        for entry in rack.all_hosts():
            self._host(entry, rack.name, leaves)

    def _host(self, entry: HostEntry, rack: str, leaves: tuple[str | None, ...]) -> None:
        if entry.name in self.hosts:
            self.report.conflicts.append(
                f"host {entry.name} is listed twice (racks {self.hosts[entry.name].rack} and "
                f"{rack}); the first is kept")
            return
        inputs = HostInputs(
            name=entry.name, rack=rack, template=self._template(entry),
            nic_gbit=entry.nic_gbit or self.inv.defaults.nic_gbit, rack_leaves=leaves,
            nvsmi=self._parse(entry.name, "nvsmi", entry.nvsmi, parse_nvidia_smi),
            nccl=self._parse(entry.name, "nccl", entry.nccl, parse_nccl_xml),
            lldp=self._parse(entry.name, "lldp", entry.lldp, parse_lldp),
            netdevs=dict(entry.netdevs))
        host = merge_host(inputs, self.report)
        self._claim(inputs, host)
        if entry.gpu_type:
            host = host.model_copy(update={"gpu_type": entry.gpu_type})
        if entry.nic_gbit:
            host = host.model_copy(update={"nics": tuple(
                n.model_copy(update={"gbit": entry.nic_gbit}) for n in host.nics)})
        self.hosts[entry.name] = host

    def _claim(self, inputs: HostInputs, host: HostSpec) -> None:
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
        for net in inputs.nccl.nets if inputs.nccl else []:
            if net.guid:
                self.claims.guid(net.guid, Claim(host.name, net.name, net.name,
                                                 inputs.nccl.source if inputs.nccl else ""))

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
        for kind in ("nvsmi", "lldp", "nccl"):
            for host in [*getattr(self.captures, kind), *self.captures.parsed.get(kind, {})]:
                if host not in self.hosts:
                    raise NotFoundError("host", host, f"--{kind} names a host that is not "
                                        "in the inventory")

    # -- switch levels ----------------------------------------------------------------------
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
            self._declare_leaf(leaf, self._pod_of_rack(host.rack), gbit, None)
            self.hosts[name] = host.model_copy(update={"uplink_leaf": leaf})
            unplaced.append(f"{name} ({_nic_list(host, missing)})")
        if unplaced:
            self.report.warnings.append(
                f"{len(unplaced)} host(s) have no switch information (no LLDP, ibnetdiscover, "
                f"rack leaf or cloud network labels): {_first(unplaced)}; each is priced "
                f"through a leaf of its own ({UNKNOWN_UPLINK_PREFIX}HOST), so transfers "
                "between them cross the pod aggregation (tier same_pod)")

    def _leaves(self) -> list[LeafSpec]:
        """Every leaf with its pod, uplink and rail (discovered from NIC indices)."""
        attached: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
        for host in self.hosts.values():
            for i, nic in enumerate(host.nics):
                if nic.leaf is not None:
                    attached[nic.leaf].append((host.name, i, nic.gbit))
        for leaf, users in attached.items():
            if leaf not in self.leaf_pod:
                pod = self._pod_of_rack(self.hosts[users[0][0]].rack)
                self.report.warnings.append(f"leaf {leaf} was discovered by LLDP; placed in "
                                            f"pod {pod} (declare it in the inventory)")
                self._declare_leaf(leaf, pod, None, None)
        rails = discover_rails(attached)
        return [self._leaf_spec(name, attached.get(name, []), rails.get(name))
                for name in self.leaf_pod]

    def _leaf_spec(self, name: str, users: list[tuple[str, int, float]],
                   rail: int | None) -> LeafSpec:
        uplink, oversub = self.leaf_entries.get(name, (None, None))
        if uplink is None and oversub is not None:
            uplink = sum(gbit for _, _, gbit in users) / oversub or None
        return LeafSpec(name=name, pod=self.leaf_pod[name], uplink_gbit=uplink, rail=rail)

    def _pod_of_rack(self, rack: str) -> str:
        return next(r.pod for r in self.racks if r.name == rack)

    def _sized_pods(self, leaves: list[LeafSpec]) -> tuple[PodSpec, ...]:
        pods = []
        for zone in self.inv.zones:
            for pod in zone.pods:
                uplink = pod.uplink_gbit
                below = [leaf.uplink_gbit for leaf in leaves if leaf.pod == pod.name]
                if uplink is None and pod.oversubscription and all(below) and below:
                    uplink = sum(b for b in below if b) / pod.oversubscription
                pods.append(PodSpec(name=pod.name, zone=zone.name, uplink_gbit=uplink))
        self.pods = pods
        return tuple(pods)

    def _sized_zones(self) -> tuple[ZoneSpec, ...]:
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
        for clique, hosts in _cliques(k8s).items():
            known = {member[h] for h in hosts if h in member}
            if known:
                continue
            domains[clique] = NvlinkDomainSpec(name=clique, hosts=tuple(sorted(hosts)))
        return tuple(domains.values())

    def _k8s(self) -> K8sNodes | None:
        nodes, path = self.captures.k8s_parsed, self.captures.k8s_nodes
        if nodes is None and path is not None:
            nodes = parse_k8s_nodes(read_capture(path), str(path))
        if nodes is None:
            return None
        zone_of = {h.name: self._zone_of_host(h) for h in self.hosts.values()}
        for node in nodes.nodes:
            name = node.hostname or node.name
            if name not in self.hosts:
                self.report.warnings.append(f"k8s node {node.name} is not in the inventory")
                continue
            if node.zone and node.zone != zone_of[name]:
                self.report.conflicts.append(
                    f"host {name}: label topology.kubernetes.io/zone={node.zone}, inventory "
                    f"zone {zone_of[name]}")
            if node.gpu_count and node.gpu_count != len(self.hosts[name].gpus):
                self.report.conflicts.append(
                    f"host {name}: k8s reports {node.gpu_count} GPUs, the fabric "
                    f"{len(self.hosts[name].gpus)}")
        return nodes

    def _zone_of_host(self, host: HostSpec) -> str:
        pod = self._pod_of_rack(host.rack)
        return next(z.name for z in self.inv.zones if any(p.name == pod for p in z.pods))


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


def _cliques(k8s: K8sNodes | None) -> dict[str, list[str]]:
    cliques: dict[str, list[str]] = defaultdict(list)
    for node in k8s.nodes if k8s else []:
        if node.nvlink_clique:
            cliques[f"clique-{node.nvlink_clique}"].append(node.hostname or node.name)
    return {k: v for k, v in cliques.items() if len(v) > 1}


def discover_rails(attached: dict[str, list[tuple[str, int, float]]]) -> dict[str, int]:
    """Rail index per leaf when the fabric is rail-optimised.

    A leaf is rail *i* when every NIC landing on it is NIC index *i* of its host, at
    least two hosts land on it, and each host spreads its NICs over several leaves.
    """
    leaves_per_host: dict[str, set[str]] = defaultdict(set)
    for leaf, users in attached.items():
        for host, _, _ in users:
            leaves_per_host[host].add(leaf)
    rails = {}
    for leaf, users in attached.items():
        indices = {i for _, i, _ in users}
        hosts = {h for h, _, _ in users}
        if len(indices) == 1 and len(hosts) > 1 and all(len(leaves_per_host[h]) > 1
                                                        for h in hosts):
            rails[leaf] = indices.pop()
    return rails


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
