"""FabricSpec: the declarative, serialisable description of a cluster's fabric.

``toposched topo build`` writes it as ``fabric.json``; the graph (``topology.graph``)
and the distance model (``topology.distance``) are both derived from it. Names:

* GPUs are addressed as ``HOST/gpuN`` (``N`` = the host-local index, as in
  ``nvidia-smi``); NICs as ``HOST/DEVICE`` (``mlx5_0``).
* Switch levels: a *leaf* (ToR or rail leaf) belongs to a *pod* (one aggregation
  layer); pods belong to a *zone*, whose spine connects them; zones connect through
  a zone link (data-centre interconnect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from topology.documents import load_document
from topology.errors import NotFoundError
from topology.tiers import LinkConfig

#: Name prefix of a leaf invented for a host whose switch no input names (see
#: docs/inventory.md, "Hosts without switch information").
UNKNOWN_UPLINK_PREFIX = "uplink-unknown-"
#: Intra-host link codes, as nvidia-smi prints them: ``NV<count>``, or a PCIe level.
PCIE_CODES = ("PIX", "PXB", "PHB", "NODE", "SYS")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuSpec(_Frozen):
    """One GPU of a host."""

    index: int = Field(ge=0)
    numa: int = 0
    pcie_switch: str | None = None
    nic: str | None = Field(default=None, description="device name of the nearest NIC")
    uuid: str | None = None


class NicSpec(_Frozen):
    """One RDMA NIC of a host and where it lands in the fabric."""

    device: str
    gbit: float = Field(gt=0, description="line rate in Gb/s")
    numa: int = 0
    pcie_switch: str | None = None
    netdev: str | None = None
    leaf: str | None = None
    port: str | None = None


class HostSpec(_Frozen):
    """One host: its GPUs, NICs and the intra-host link matrix between GPUs."""

    name: str
    rack: str
    gpu_type: str = "unknown"
    sockets: int = Field(default=1, ge=1)
    gpus: tuple[GpuSpec, ...]
    nics: tuple[NicSpec, ...] = ()
    gpu_links: tuple[tuple[str, ...], ...] = Field(
        description="GPU x GPU link codes: 'X' on the diagonal, 'NV<n>' or a PCIe code")
    nvlink_domain: str | None = None
    uplink_leaf: str | None = Field(
        default=None, description="leaf for GPUs whose NIC has no leaf (or that have no "
        "NIC): a cloud network node, or an unknown-uplink leaf of this host alone")
    sources: tuple[str, ...] = Field(default=(), description="captures merged into it")

    def gpu_name(self, index: int) -> str:
        """Fabric-wide name of local GPU ``index``."""
        return f"{self.name}/gpu{index}"

    def leaf_of(self, nic: NicSpec | None) -> str | None:
        """The leaf a NIC of this host (or, for ``None``, the host itself) enters by."""
        return (nic.leaf if nic is not None else None) or self.uplink_leaf

    def nic(self, device: str) -> NicSpec:
        """The NIC with this device name."""
        for nic in self.nics:
            if nic.device == device:
                return nic
        raise NotFoundError("NIC", f"{self.name}/{device}")


class LeafSpec(_Frozen):
    """A leaf (ToR or rail) switch."""

    name: str
    pod: str
    uplink_gbit: float | None = Field(default=None, gt=0,
                                      description="aggregate uplink; None = non-blocking")
    rail: int | None = Field(default=None, description="rail index when rail-optimised")


class PodSpec(_Frozen):
    """An aggregation block: leaves under one aggregation layer."""

    name: str
    zone: str
    uplink_gbit: float | None = Field(default=None, gt=0)


class RackSpec(_Frozen):
    """A physical rack (a failure domain); its hosts' NICs land on leaves of its pod."""

    name: str
    pod: str


class ZoneSpec(_Frozen):
    """An availability zone; zones connect over a zone link."""

    name: str
    region: str | None = None
    uplink_gbit: float | None = Field(default=None, gt=0)
    uplink_latency_us: float | None = Field(default=None, ge=0)


class NvlinkDomainSpec(_Frozen):
    """An NVLink domain spanning hosts (NVL72-style: one NVSwitch fabric)."""

    name: str
    hosts: tuple[str, ...]
    nvlinks_per_gpu: int = Field(default=18, gt=0)


class FabricSpec(_Frozen):
    """The whole cluster fabric."""

    version: Literal[1] = 1
    name: str = "cluster"
    links: LinkConfig
    zones: tuple[ZoneSpec, ...]
    pods: tuple[PodSpec, ...]
    leaves: tuple[LeafSpec, ...]
    racks: tuple[RackSpec, ...]
    hosts: tuple[HostSpec, ...]
    nvlink_domains: tuple[NvlinkDomainSpec, ...] = ()
    warnings: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()

    def host(self, name: str) -> HostSpec:
        """The host with this name."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise NotFoundError("host", name)

    def gpu_names(self) -> list[str]:
        """Every GPU's fabric-wide name, hosts in order."""
        return [host.gpu_name(gpu.index) for host in self.hosts for gpu in host.gpus]

    def save(self, path: str | Path) -> None:
        """Write the spec as JSON (creating the folder if needed)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.model_dump_json(indent=1) + "\n", encoding="utf-8")


def load_fabric(path: str | Path) -> FabricSpec:
    """Load a ``fabric.json`` written by :meth:`FabricSpec.save`."""
    return load_document(FabricSpec, path)


def nvlink_count(code: str) -> int:
    """Number of NVLinks in a link code (``NV18`` → 18, PCIe codes → 0)."""
    return int(code[2:]) if code.startswith("NV") and code[2:].isdigit() else 0
