"""The operator's cluster inventory (YAML): zones → pods → leaves and racks → hosts.

Example (docs/inventory.md has the full reference)::

    version: 1
    name: lab
    defaults: {template: hgx-h100}
    zones:
      - name: zone-a
        region: us-east
        oversubscription: 4          # pod uplinks / zone uplink
        pods:
          - name: pod-a1
            oversubscription: 2      # leaf uplinks / pod uplink
            leaves:
              - {name: leaf-a1-0, oversubscription: 1}
            racks:
              - name: rack-a1-0
                leaf: leaf-a1-0      # ToR: every NIC of the rack lands here
                hosts:
                  - name: h001
                    nvsmi: captures/h001.nvsmi.txt
                    lldp: captures/h001.lldp.json
                    netdevs: {mlx5_0: enp26s0np0}
                  - h002
                host_range: {prefix: h1, count: 8}
    nvlink_domains:
      - {name: nvl72-0, hosts: [h001, h002]}
    include: [more-racks.yaml]       # merged; disagreements are conflicts

Capture paths are relative to the file that names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from topology.documents import load_yaml, validate
from topology.errors import Issue, ValidationError
from topology.templates import HostTemplate


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostEntry(_Strict):
    """One host and the captures to merge into it."""

    name: str = Field(min_length=1)
    template: str | None = None
    gpu_type: str | None = None
    nvsmi: str | None = None
    lldp: str | None = None
    nccl: str | None = None
    rdma: str | None = Field(default=None, description="rdma-devices capture (topo collect, "
                             "rdma link, ibdev2netdev or ibstat output)")
    netdevs: dict[str, str] = Field(default_factory=dict,
                                    description="RDMA device → network interface")
    nic_gbit: float | None = Field(default=None, gt=0)


class HostRange(_Strict):
    """Shorthand for many similar hosts: ``prefix`` + zero-padded number."""

    prefix: str
    count: int = Field(gt=0, le=100_000)
    start: int = Field(default=0, ge=0)
    digits: int = Field(default=2, ge=1, le=8)
    template: str | None = None

    def expand(self) -> list[HostEntry]:
        """The hosts this range names."""
        return [HostEntry(name=f"{self.prefix}{i:0{self.digits}d}", template=self.template)
                for i in range(self.start, self.start + self.count)]


class RackEntry(_Strict):
    """A rack: its hosts and where their NICs land (a ToR, or one leaf per rail)."""

    name: str = Field(min_length=1)
    leaf: str | None = None
    rails: tuple[str, ...] = ()
    hosts: tuple[HostEntry, ...] = ()
    host_range: HostRange | None = None

    @field_validator("hosts", mode="before")
    @classmethod
    def _names_as_hosts(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    def all_hosts(self) -> list[HostEntry]:
        """Listed hosts plus the expanded range."""
        return list(self.hosts) + (self.host_range.expand() if self.host_range else [])


class LeafEntry(_Strict):
    """A leaf switch; its uplink is given or derived from downlinks / oversubscription."""

    name: str = Field(min_length=1)
    uplink_gbit: float | None = Field(default=None, gt=0)
    oversubscription: float | None = Field(default=None, gt=0)


class PodEntry(_Strict):
    """An aggregation block."""

    name: str = Field(min_length=1)
    uplink_gbit: float | None = Field(default=None, gt=0)
    oversubscription: float | None = Field(default=None, gt=0)
    leaves: tuple[LeafEntry, ...] = ()
    racks: tuple[RackEntry, ...] = ()


class ZoneEntry(_Strict):
    """An availability zone."""

    name: str = Field(min_length=1)
    region: str | None = None
    uplink_gbit: float | None = Field(default=None, gt=0)
    uplink_latency_us: float | None = Field(default=None, ge=0)
    oversubscription: float | None = Field(default=None, gt=0)
    pods: tuple[PodEntry, ...] = ()


class DomainEntry(_Strict):
    """An NVLink domain spanning hosts."""

    name: str = Field(min_length=1)
    hosts: tuple[str, ...] = Field(min_length=1)
    nvlinks_per_gpu: int = Field(default=18, gt=0)


class Defaults(_Strict):
    """Values hosts inherit."""

    template: str | None = None
    nic_gbit: float = Field(default=400, gt=0)


class Inventory(_Strict):
    """A whole inventory document (after includes are merged)."""

    version: Literal[1] = 1
    name: str = "cluster"
    defaults: Defaults = Defaults()
    templates: dict[str, HostTemplate] = Field(default_factory=dict)
    links: dict[str, Any] = Field(default_factory=dict,
                                  description="overrides merged over config/links.yaml")
    zones: tuple[ZoneEntry, ...] = Field(min_length=1)
    nvlink_domains: tuple[DomainEntry, ...] = ()
    ibnetdiscover: tuple[str, ...] = Field(default=(), description="subnet captures of the "
                                           "cluster: ibnetdiscover (plain or -p) or iblinkinfo "
                                           "(classic or -l), detected")
    aws_topology: tuple[str, ...] = Field(default=(), description="describe-instance-topology "
                                          "outputs")
    include: tuple[str, ...] = ()
    base_dir: str = Field(default=".", exclude=True)


def load_inventory(path: str | Path) -> Inventory:
    """Load an inventory and the files it includes; all schema errors at once."""
    path = Path(path)
    data = _document(path)
    inventory = validate(Inventory, {**data, "base_dir": str(path.parent)}, str(path))
    for include in inventory.include:
        inventory = merge_inventories(inventory, load_inventory(path.parent / include))
    return inventory


def _document(path: Path) -> dict[str, Any]:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ValidationError(str(path), [Issue("<document>", "expected a mapping with "
                                                "'version' and 'zones'")])
    return data


def merge_inventories(base: Inventory, extra: Inventory) -> Inventory:
    """Merge an included inventory: new zones/pods/racks are added, same names are merged.

    Disagreements are not resolved here: the fabric builder reports hosts named twice
    with different places or captures as conflicts.
    """
    zones = {z.name: z for z in base.zones}
    for zone in extra.zones:
        zones[zone.name] = _merge_zone(zones[zone.name], zone) if zone.name in zones else zone
    return base.model_copy(update={
        "zones": tuple(zones.values()),
        "nvlink_domains": base.nvlink_domains + extra.nvlink_domains,
        "ibnetdiscover": base.ibnetdiscover + _rebased(extra, extra.ibnetdiscover),
        "aws_topology": base.aws_topology + _rebased(extra, extra.aws_topology),
        "templates": {**extra.templates, **base.templates},
    })


def _rebased(extra: Inventory, paths: tuple[str, ...]) -> tuple[str, ...]:
    """Paths named by an included file (relative to it), made absolute."""
    return tuple(str((Path(extra.base_dir) / p).resolve()) for p in paths)


def _merge_zone(a: ZoneEntry, b: ZoneEntry) -> ZoneEntry:
    pods = {p.name: p for p in a.pods}
    for pod in b.pods:
        if pod.name in pods:
            old = pods[pod.name]
            pods[pod.name] = old.model_copy(update={"leaves": old.leaves + pod.leaves,
                                                    "racks": old.racks + pod.racks})
        else:
            pods[pod.name] = pod
    return a.model_copy(update={"pods": tuple(pods.values())})
