"""Topology feeds: captures posted per host over HTTP, and the fabric rebuilt from them.

A host's ``nvidia-smi topo -m``, LLDP and NCCL captures (and the cluster's Kubernetes
node list) arrive as text. Each is parsed once on arrival (errors name the request as
their source); the fabric is then rebuilt in memory from the inventory and every
host's latest parse, through the same builder the CLI uses, minus the file reading.

Replicas share the feeds as posted (texts) with the fabric built from them, in one
document (:class:`SharedTopology`); a replica re-parses only the texts it has not
parsed before (:func:`read_shared`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from topology.aws_topology import parse_aws_topology
from topology.build import Captures, build_fabric
from topology.cabling import RailBreak, rail_breaks
from topology.documents import parse_document, validate
from topology.errors import ConflictError, Issue, ValidationError
from topology.iblinkinfo import parse_subnet_capture
from topology.inventory import Inventory
from topology.k8s import parse_k8s_nodes
from topology.lldp import parse_lldp
from topology.nccl import parse_nccl_xml
from topology.nvsmi import parse_nvidia_smi
from topology.rdma_devices import parse_rdma_devices
from topology.spec import FabricSpec

FeedKind = Literal["nvsmi", "lldp", "nccl", "rdma"]
_PARSERS: dict[FeedKind, Callable[[str, str], Any]] = {
    "nvsmi": parse_nvidia_smi, "lldp": parse_lldp, "nccl": parse_nccl_xml,
    "rdma": parse_rdma_devices}


@dataclass(frozen=True)
class Capture:
    """One posted capture: its text (to spot re-posts) and what it parsed to."""

    text: str
    parsed: Any


@dataclass(frozen=True)
class Feeds:
    """The inventory, the latest capture of each kind per host, and the cluster captures:
    Kubernetes nodes, InfiniBand subnets (by name) and AWS instance topology (immutable;
    replaced)."""

    inventory: Inventory | None = None
    hosts: Mapping[str, Mapping[FeedKind, Capture]] = field(default_factory=dict)
    k8s: Capture | None = None
    #: The inventory as posted: what replicas share (they parse it again).
    inventory_text: str | None = None
    ib: Mapping[str, Capture] = field(default_factory=dict)
    aws: Capture | None = None

    def with_inventory(self, inventory: Inventory, text: str) -> Feeds:
        """These feeds with the inventory replaced (``text``: as posted)."""
        return replace(self, inventory=inventory, inventory_text=text)

    def with_k8s(self, capture: Capture) -> Feeds:
        """These feeds with the Kubernetes node list replaced."""
        return replace(self, k8s=capture)

    def with_ib(self, name: str, capture: Capture) -> Feeds:
        """These feeds with InfiniBand subnet ``name`` replaced."""
        return replace(self, ib={**self.ib, name: capture})

    def with_aws(self, capture: Capture) -> Feeds:
        """These feeds with the AWS instance topology replaced."""
        return replace(self, aws=capture)

    def is_empty(self) -> bool:
        """True before the first feed."""
        return (self.inventory is None and not self.hosts and self.k8s is None
                and not self.ib and self.aws is None)

    def buildable(self) -> bool:
        """Whether a fabric can be built: with an inventory, or without one from a
        cluster capture that says where hosts are (node labels, a subnet, AWS topology).
        Per-host captures alone wait for one of those."""
        return self.inventory is not None or self.k8s is not None or bool(self.ib) \
            or self.aws is not None

    def with_capture(self, host: str, kind: FeedKind, capture: Capture) -> Feeds:
        """These feeds with ``host``'s ``kind`` capture replaced."""
        per_host = {**self.hosts.get(host, {}), kind: capture}
        return replace(self, hosts={**self.hosts, host: per_host})

    def same_as_posted(self, host: str, kind: FeedKind, text: str) -> bool:
        """True when ``host`` already posted exactly ``text`` for ``kind``."""
        held = self.hosts.get(host, {}).get(kind)
        return held is not None and held.text == text


def parse_capture(kind: FeedKind, text: str, source: str) -> Capture:
    """Parse a posted capture; parse errors name ``source`` and the line."""
    return Capture(text=text, parsed=_PARSERS[kind](text, source))


def parse_k8s(text: str, source: str) -> Capture:
    """Parse a posted Kubernetes node list (``kubectl get nodes -o json|yaml``)."""
    return Capture(text=text, parsed=parse_k8s_nodes(text, source))


def parse_inventory(text: str, source: str) -> Inventory:
    """Parse and validate an inventory posted over HTTP (no capture paths, no includes)."""
    inventory = validate(Inventory, parse_document(text, source, "an inventory (version, zones)"),
                         source)
    check_http_inventory(inventory, source)
    return inventory


def check_http_inventory(inventory: Inventory, source: str) -> None:
    """Refuse capture paths and includes: over HTTP, captures come as feeds."""
    issues = [Issue(f"include[{i}]", "includes are not allowed over HTTP")
              for i in range(len(inventory.include))]
    issues += [Issue(f"{key}[{i}]", f"capture paths are not allowed over HTTP; PUT {route} "
                     "instead")
               for key, route in (("ibnetdiscover", "/v1/topology/ibnetdiscover/{name}"),
                                  ("aws_topology", "/v1/topology/aws-instance-topology"))
               for i in range(len(getattr(inventory, key)))]
    for zi, zone in enumerate(inventory.zones):
        for pi, pod in enumerate(zone.pods):
            for ri, rack in enumerate(pod.racks):
                for hi, host in enumerate(rack.hosts):
                    path = f"zones[{zi}].pods[{pi}].racks[{ri}].hosts[{hi}]"
                    issues += [Issue(f"{path}.{kind}", "capture paths are not allowed over "
                                     f"HTTP; PUT /v1/topology/hosts/{host.name}/… instead")
                               for kind in ("nvsmi", "lldp", "nccl", "rdma")
                               if getattr(host, kind) is not None]
    if issues:
        raise ValidationError(source, issues)


def parse_ibnetdiscover_feed(text: str, source: str) -> Capture:
    """Parse a posted subnet capture: ibnetdiscover (plain or ``-p``) or iblinkinfo
    (classic or ``-l``), detected."""
    return Capture(text=text, parsed=parse_subnet_capture(text, source))


def parse_aws_feed(text: str, source: str) -> Capture:
    """Parse a posted ``describe-instance-topology`` output."""
    return Capture(text=text, parsed=parse_aws_topology(text, source))


def build_from_feeds(feeds: Feeds) -> FabricSpec:
    """Rebuild the fabric from the inventory (if any) and the feeds; conflicts raise
    409-style."""
    if not feeds.buildable():
        raise ConflictError("no inventory loaded: PUT /v1/topology/inventory first (or a "
                            "Kubernetes node list, an ibnetdiscover capture or AWS topology)")
    parsed: dict[str, dict[str, Any]] = {kind: {} for kind in _PARSERS}
    for host, captures in feeds.hosts.items():
        for kind, capture in captures.items():
            parsed[kind][host] = capture.parsed
    k8s = feeds.k8s.parsed if feeds.k8s else None
    spec = build_fabric(feeds.inventory, Captures(
        parsed=parsed, k8s_parsed=k8s, ib_parsed=[c.parsed for c in feeds.ib.values()],
        aws_parsed=[feeds.aws.parsed] if feeds.aws else []), keep_going=True)
    if spec.conflicts:
        raise FeedConflict(spec.conflicts)
    return spec


class SharedTopology(BaseModel):
    """The topology as replicas share it: every feed as posted, and the fabric in force
    (built from the feeds, or the start-up fabric document while there is none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    inventory: str | None = None
    hosts: dict[str, dict[FeedKind, str]] = Field(default_factory=dict)
    k8s: str | None = None
    ib: dict[str, str] = Field(default_factory=dict)
    aws: str | None = None
    fabric: FabricSpec | None = None


def shared_text(feeds: Feeds, fabric: FabricSpec | None) -> str:
    """The shared document (JSON) of ``feeds`` and ``fabric``."""
    hosts = {host: {kind: c.text for kind, c in captures.items()}
             for host, captures in feeds.hosts.items()}
    return SharedTopology(inventory=feeds.inventory_text, hosts=hosts,
                          k8s=feeds.k8s.text if feeds.k8s else None,
                          ib={name: c.text for name, c in feeds.ib.items()},
                          aws=feeds.aws.text if feeds.aws else None,
                          fabric=fabric).model_dump_json()


def read_shared(text: str, known: Feeds) -> tuple[Feeds, FabricSpec | None]:
    """The feeds and fabric of a shared document; texts that ``known`` holds keep their
    parse (a capture is parsed once per replica, not once per change)."""
    doc = SharedTopology.model_validate_json(text)
    source = "shared topology"
    inventory = known.inventory if doc.inventory == known.inventory_text else (
        parse_inventory(doc.inventory, f"{source}: inventory") if doc.inventory else None)
    hosts = {host: {kind: _reparsed(known.hosts.get(host, {}).get(kind), kind, text,
                                    f"{source}: {host} {kind}")
                    for kind, text in captures.items()}
             for host, captures in doc.hosts.items()}
    k8s = known.k8s if known.k8s and known.k8s.text == doc.k8s else (
        parse_k8s(doc.k8s, f"{source}: k8s nodes") if doc.k8s is not None else None)
    ib = {name: _kept(known.ib.get(name), text, parse_ibnetdiscover_feed,
                      f"{source}: ibnetdiscover {name}") for name, text in doc.ib.items()}
    aws = None if doc.aws is None else _kept(known.aws, doc.aws, parse_aws_feed,
                                             f"{source}: aws topology")
    return Feeds(inventory=inventory, hosts=hosts, k8s=k8s, inventory_text=doc.inventory,
                 ib=ib, aws=aws), doc.fabric


def _kept(held: Capture | None, text: str, parse: Callable[[str, str], Capture],
          source: str) -> Capture:
    return held if held is not None and held.text == text else parse(text, source)


def _reparsed(held: Capture | None, kind: FeedKind, text: str, source: str) -> Capture:
    return held if held is not None and held.text == text else parse_capture(kind, text, source)


class FeedConflict(ConflictError):
    """The inputs disagree; ``conflicts`` lists every disagreement (409 at the API)."""

    def __init__(self, conflicts: tuple[str, ...]) -> None:
        self.conflicts = conflicts
        super().__init__(f"{len(conflicts)} conflict(s) between inputs: " + "; ".join(conflicts))


class NicMove(BaseModel):
    """A NIC whose leaf changed between two fabrics (``port``: where it is now)."""

    model_config = ConfigDict(frozen=True)
    host: str
    nic: str
    before: str | None
    after: str | None
    port: str | None = None


class FabricChange(BaseModel):
    """What a rebuild changed: hosts, GPUs, NIC leaves and NIC-leaf links, and rail
    breaks (mis-cabling) that appeared or were mended."""

    model_config = ConfigDict(frozen=True)
    changed: bool
    hosts_added: tuple[str, ...] = ()
    hosts_removed: tuple[str, ...] = ()
    gpus_added: tuple[str, ...] = ()
    gpus_removed: tuple[str, ...] = ()
    nics_moved: tuple[NicMove, ...] = ()
    links_gone: tuple[str, ...] = ()
    rail_breaks: tuple[RailBreak, ...] = ()
    rail_breaks_mended: tuple[RailBreak, ...] = ()


def _nic_links(spec: FabricSpec) -> dict[tuple[str, str], tuple[str | None, str | None]]:
    return {(h.name, n.device): (n.leaf, n.port) for h in spec.hosts for n in h.nics}


def _breaks(spec: FabricSpec | None) -> dict[tuple[str, str], RailBreak]:
    return {(b.host, b.nic): b for b in (rail_breaks(spec) if spec is not None else [])}


def diff_fabrics(before: FabricSpec | None, after: FabricSpec) -> FabricChange:
    """The difference between two fabrics, in the terms an operator watches."""
    old_breaks, new_breaks = _breaks(before), _breaks(after)
    breaks = tuple(b for key, b in new_breaks.items() if old_breaks.get(key) != b)
    if before is None:
        return FabricChange(changed=True, hosts_added=tuple(h.name for h in after.hosts),
                            gpus_added=tuple(after.gpu_names()), rail_breaks=breaks)
    old_hosts, new_hosts = {h.name for h in before.hosts}, {h.name for h in after.hosts}
    old_gpus, new_gpus = set(before.gpu_names()), set(after.gpu_names())
    old_nics, new_nics = _nic_links(before), _nic_links(after)
    moves = tuple(NicMove(host=h, nic=n, before=leaf, after=new_nics[(h, n)][0],
                          port=new_nics[(h, n)][1])
                  for (h, n), (leaf, _) in old_nics.items()
                  if (h, n) in new_nics and new_nics[(h, n)][0] != leaf)
    gone = tuple(f"{h}/{n}->{leaf}" for (h, n), (leaf, _) in old_nics.items()
                 if leaf is not None and new_nics.get((h, n), (None, None))[0] != leaf)
    return FabricChange(
        changed=before != after, hosts_added=tuple(sorted(new_hosts - old_hosts)),
        hosts_removed=tuple(sorted(old_hosts - new_hosts)),
        gpus_added=tuple(sorted(new_gpus - old_gpus)),
        gpus_removed=tuple(sorted(old_gpus - new_gpus)), nics_moved=moves, links_gone=gone,
        rail_breaks=breaks,
        rail_breaks_mended=tuple(b for key, b in old_breaks.items() if key not in new_breaks))
