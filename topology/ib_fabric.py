"""What an InfiniBand subnet says about a fabric: leaves, spines, pods, uplinks, and
which host NIC sits on which switch port.

From one or more :class:`~topology.ibnetdiscover.IbFabric` captures (a cluster may have
one subnet per rail, or several hosts may post the same subnet; nodes and cables are
merged by GUID):

* a *leaf* is a switch with a host's HCA on it (SHARP aggregation nodes, the CA every
  Quantum switch exposes on its last port, do not count); higher levels are numbered
  by their distance from the leaves (2 = spine, 3 = core);
* a *pod* is a set of leaves joined below the top level: with three levels or more, a
  connected group of leaves and spines; with two, every leaf the spines join;
* a leaf's uplink is the sum of the rates of its cables to higher levels, a pod's the
  sum of its spines' cables to the level above;
* switch names: the host name a managed switch puts in its description
  (``MF0;A09-P1-IBLEAF-04-04:MQM9701/U1`` → ``A09-P1-IBLEAF-04-04``), else its
  description when no other switch shares it and it is not a vendor default, else its
  ibnetdiscover id (``S-2c5eab0300b87b40``).

Host HCAs are matched to hosts' NICs by GUID (from the hosts' RDMA device captures or
NCCL dumps) and otherwise by node description, whose default is ``<hostname> <device>``
(rdma-core's rdma-ndd) or ``<hostname> HCA-<n>`` (older kernels; HCA-*n* is taken to be
``mlx5_<n-1>`` when the host has that device, which a warning says).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from topology.ibnetdiscover import AGGREGATION_NODE, IbFabric, IbLink, IbNode

_MANAGED_NAME = re.compile(r"[^;:]*;([^;:]+):")
_VENDOR_DEFAULT = re.compile(r"Mellanox Technologies|NVIDIA|Infiniscale|SwitchX|SwitchIB|"
                             r"Quantum|ConnectX|Voltaire|QLogic|Intel", re.IGNORECASE)
_HCA_INDEX = re.compile(r"HCA-(\d{1,3})")


@dataclass(frozen=True)
class Attachment:
    """Where one HCA port is cabled: a switch (by fabric name) and its port."""

    ca_port: int
    switch: str
    switch_guid: str
    switch_port: int
    gbit: float | None


@dataclass
class IbTopology:
    """The fabric structure of the merged captures."""

    sources: list[str]
    nodes: dict[str, IbNode]
    switch_name: dict[str, str] = field(default_factory=dict)
    level: dict[str, int] = field(default_factory=dict)
    pod_of_leaf: dict[str, str] = field(default_factory=dict)
    leaf_uplink_gbit: dict[str, float] = field(default_factory=dict)
    pod_uplink_gbit: dict[str, float] = field(default_factory=dict)
    attachments: dict[str, list[Attachment]] = field(default_factory=dict)

    def host_cas(self) -> list[IbNode]:
        """HCAs that hang off a leaf (aggregation nodes and switches excluded)."""
        return [self.nodes[guid] for guid in self.attachments]

    def adopt_names(self, declared: Iterable[str]) -> None:
        """Call switches by the names an inventory declares for them: a declared leaf
        that equals (ignoring case) a switch's fabric name, description, id
        (``S-<guid>``) or GUID names that switch."""
        wanted = {name.lower(): name for name in declared}
        renames = {}
        for guid, name in self.switch_name.items():
            node = self.nodes[guid]
            for alias in (name, node.description, f"S-{guid[2:]}", guid, guid[2:]):
                if alias.lower() in wanted and wanted[alias.lower()] != name:
                    renames[name] = wanted[alias.lower()]
                    break
        if not renames:
            return
        self.switch_name = {g: renames.get(n, n) for g, n in self.switch_name.items()}
        self.pod_of_leaf = {renames.get(n, n): p for n, p in self.pod_of_leaf.items()}
        self.leaf_uplink_gbit = {renames.get(n, n): g for n, g in self.leaf_uplink_gbit.items()}
        self.attachments = {guid: [replace(a, switch=renames.get(a.switch, a.switch))
                                   for a in found] for guid, found in self.attachments.items()}


def analyse(fabrics: Sequence[IbFabric]) -> IbTopology:
    """Merge captures and derive leaves, levels, pods, uplinks and HCA attachments."""
    nodes: dict[str, IbNode] = {}
    links: dict[tuple[tuple[str, int], tuple[str, int]], IbLink] = {}
    for fabric in fabrics:
        for node in fabric.nodes:
            if node.guid not in nodes or (not nodes[node.guid].description and node.description):
                nodes[node.guid] = node
        for link in fabric.links:
            links.setdefault(((link.a, link.a_port), (link.b, link.b_port)), link)
    topology = IbTopology(sources=[f.source for f in fabrics], nodes=nodes)
    _Analysis(topology, list(links.values())).run()
    return topology


def is_host_ca(node: IbNode) -> bool:
    """A CA that belongs to a host (not a switch's SHARP aggregation node)."""
    return node.kind == "ca" and AGGREGATION_NODE not in node.description


class _Analysis:
    def __init__(self, topology: IbTopology, links: list[IbLink]) -> None:
        self.t = topology
        self.links = links
        self.neighbours: dict[str, set[str]] = defaultdict(set)

    def run(self) -> None:
        nodes = self.t.nodes
        switches = [guid for guid, node in nodes.items() if node.kind == "switch"]
        self.t.switch_name = switch_names([nodes[guid] for guid in switches])
        for link in self.links:
            a, b = nodes[link.a], nodes[link.b]
            if a.kind == "switch" and b.kind == "switch" and a.guid != b.guid:
                self.neighbours[a.guid].add(b.guid)
                self.neighbours[b.guid].add(a.guid)
            else:
                self._attach(a, link.a_port, b, link.b_port, link.gbit)
        self._levels()
        self._pods()
        self._uplinks()

    def _attach(self, a: IbNode, a_port: int, b: IbNode, b_port: int,
                gbit: float | None) -> None:
        for ca, ca_port, switch, switch_port in ((a, a_port, b, b_port), (b, b_port, a, a_port)):
            if is_host_ca(ca) and switch.kind == "switch":
                self.t.attachments.setdefault(ca.guid, []).append(Attachment(
                    ca_port, self.t.switch_name[switch.guid], switch.guid, switch_port, gbit))

    def _levels(self) -> None:
        leaves = {a.switch_guid for found in self.t.attachments.values() for a in found}
        queue = deque(leaves)
        self.t.level = dict.fromkeys(leaves, 1)
        while queue:
            guid = queue.popleft()
            for other in self.neighbours[guid]:
                if other not in self.t.level:
                    self.t.level[other] = self.t.level[guid] + 1
                    queue.append(other)

    def _pods(self) -> None:
        """Leaves joined below the top level form a pod (union-find over cables)."""
        top = max(self.t.level.values(), default=1)
        below = top if top <= 2 else top - 1
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            while parent.get(x, x) != x:
                parent[x] = parent.get(parent[x], parent[x])
                x = parent[x]
            return x

        for guid, level in self.t.level.items():
            if level > below:
                continue
            for other in self.neighbours[guid]:
                if self.t.level.get(other, top + 1) <= below:
                    parent[find(guid)] = find(other)
        groups: dict[str, list[str]] = defaultdict(list)
        for guid, level in self.t.level.items():
            if level == 1:
                groups[find(guid)].append(self.t.switch_name[guid])
        for members in groups.values():
            pod = f"ib-{min(members)}"
            for leaf in members:
                self.t.pod_of_leaf[leaf] = pod

    def _uplinks(self) -> None:
        level, name = self.t.level, self.t.switch_name
        top = max(level.values(), default=1)
        for link in self.links:
            if link.gbit is None or link.a not in level or link.b not in level:
                continue
            low, high = sorted((link.a, link.b), key=lambda g: level[g])
            if level[high] <= level[low]:
                continue
            if level[low] == 1:
                leaf = name[low]
                self.t.leaf_uplink_gbit[leaf] = self.t.leaf_uplink_gbit.get(leaf, 0) + link.gbit
            elif level[low] == 2 and top >= 3:
                pods = {self.t.pod_of_leaf[name[g]] for g in self.neighbours[low]
                        if level.get(g) == 1}
                for pod in pods:  # a spine serves one pod below a core level
                    self.t.pod_uplink_gbit[pod] = self.t.pod_uplink_gbit.get(pod, 0) + link.gbit


def switch_names(switches: Iterable[IbNode]) -> dict[str, str]:
    """A readable, unique fabric name per switch GUID (rules in the module docstring)."""
    found = list(switches)
    bases = {node.guid: _base_name(node) for node in found}
    counts = Counter(bases.values())
    return {guid: base if base and counts[base] == 1 else _id_name(guid)
            for guid, base in bases.items()}


def _id_name(guid: str) -> str:
    """``S-<guid>``; a switch iblinkinfo knew only by LID (``lid:4@file``) is ``S-lid4``."""
    if guid.startswith("lid:"):
        return "S-lid" + guid[4:].partition("@")[0]
    return f"S-{guid[2:]}"


def _base_name(node: IbNode) -> str | None:
    managed = _MANAGED_NAME.match(node.description)
    if managed:
        return managed.group(1).strip() or None
    if not node.description or _VENDOR_DEFAULT.search(node.description):
        return None
    return node.description


# -- matching HCAs to hosts -----------------------------------------------------------------

@dataclass(frozen=True)
class HostNics:
    """What the fabric knows of a host's NICs: device names and their GUIDs."""

    name: str
    devices: tuple[str, ...]
    guids: Mapping[str, str] = field(default_factory=dict)
    """GUID (node or port) → device."""


@dataclass
class Matches:
    """HCAs matched to host NICs, and what could not be matched or was guessed."""

    nics: dict[tuple[str, str], tuple[str, list[Attachment]]] = field(default_factory=dict)
    """(host, device) → (HCA GUID, attachments)."""
    inferred: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def match_hosts(topology: IbTopology, hosts: Iterable[HostNics]) -> Matches:
    """Match every host HCA of the subnet to a host NIC, by GUID then by description."""
    hosts = list(hosts)
    by_guid = {guid: (h.name, device) for h in hosts for guid, device in h.guids.items()}
    by_name: dict[str, HostNics] = {}
    for host in hosts:
        by_name.setdefault(host.name.lower(), host)
        by_name.setdefault(host.name.split(".")[0].lower(), host)
    result = Matches()
    for guid, attachments in topology.attachments.items():
        ca = topology.nodes[guid]
        found = by_guid.get(guid) or _by_description(ca, by_name, result)
        if found is None:
            result.unmatched.append(ca.description or guid)
            continue
        held = result.nics.get(found)
        if held is not None and held[0] != guid:
            result.conflicts.append(
                f"host {found[0]} NIC {found[1]} matches two HCAs of the InfiniBand subnet "
                f"({held[0]} and {guid}, described {ca.description!r}): give node GUIDs "
                "(topo collect's rdma-devices capture) to tell them apart")
            continue
        result.nics[found] = (guid, sorted(attachments, key=lambda a: a.ca_port))
    return result


def _by_description(ca: IbNode, by_name: Mapping[str, HostNics],
                    result: Matches) -> tuple[str, str] | None:
    words = ca.description.split()
    if len(words) < 2:
        return None
    host = by_name.get(words[0].lower()) or by_name.get(words[0].split(".")[0].lower())
    if host is None:
        return None
    device = words[1]
    if device in host.devices:
        return host.name, device
    index = _HCA_INDEX.fullmatch(device)
    if index is not None and f"mlx5_{int(index.group(1)) - 1}" in host.devices:
        result.inferred.append(f"{host.name} {device}")
        return host.name, f"mlx5_{int(index.group(1)) - 1}"
    return None


# -- placing host NICs ------------------------------------------------------------------------

@dataclass(frozen=True)
class NicPlace:
    """Where the subnet puts one host NIC."""

    leaf: str
    port: str
    gbit: float | None


@dataclass
class IbPlacement:
    """Host NICs placed by the subnet, with what the placing had to say."""

    nics: dict[tuple[str, str], NicPlace] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def place_nics(topology: IbTopology, hosts: Iterable[HostNics]) -> IbPlacement:
    """Match HCAs to host NICs and say where each matched NIC is cabled."""
    matches = match_hosts(topology, hosts)
    placement = IbPlacement(conflicts=list(matches.conflicts))
    for (host, device), (_, attachments) in sorted(matches.nics.items()):
        first = attachments[0]
        placement.nics[(host, device)] = NicPlace(first.switch, str(first.switch_port),
                                                  first.gbit)
        others = {a.switch for a in attachments[1:]} - {first.switch}
        if others:
            placement.warnings.append(
                f"host {host} NIC {device}: its HCA ports reach {first.switch} and "
                f"{', '.join(sorted(others))}; port {first.ca_port}'s switch is used")
    if matches.inferred:
        placement.warnings.append(
            f"{len(matches.inferred)} HCA(s) matched by an 'HCA-<n>' description taken as "
            f"mlx5_<n-1> ({_some(matches.inferred)}); give node GUIDs (topo collect's "
            "rdma-devices capture) to be sure")
    if matches.unmatched:
        counted = Counter(matches.unmatched)
        placement.warnings.append(
            f"{len(matches.unmatched)} HCA(s) of the InfiniBand subnet match no host NIC "
            f"(by GUID or by a '<host> <device>' description): "
            + _some([f"{d!r} x{n}" if n > 1 else repr(d) for d, n in counted.most_common()]))
    return placement


def _some(items: Sequence[str], shown: int = 4) -> str:
    head = ", ".join(items[:shown])
    return head if len(items) <= shown else f"{head} … ({len(items)} in all)"
