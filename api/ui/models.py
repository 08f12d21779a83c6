"""What the operator's page reads: the fabric from cluster to host, with the placement
and the registered workers on it.

Three zoom levels, each answered by its own read so that a cluster of thousands of GPUs
stays light: the cluster (:class:`Overview`: every host as one tile with counts, no
GPU below it), one pod (:class:`PodDetail`: each host's GPUs) and one host
(:class:`HostDetail`: GPUs, NICs, the link matrix, its NVLink domain). These are the
page's own reads (docs/ui.md), not a versioned contract.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from topology.summary import FabricSummary

Role = Literal["prefill", "decode", "both"]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class HostTile(_Out):
    """One host at cluster zoom: how many of its GPUs serve which role."""

    name: str
    gpus: int
    gpu_type: str
    nvlink: bool = Field(description="its GPUs talk over NVLink")
    domain: str | None = Field(description="multi-host NVLink domain, if any")
    prefill: int = Field(description="GPUs of prefill instances or workers")
    decode: int
    both: int = Field(description="GPUs of workers serving both roles")
    live: int = Field(description="GPUs a registered worker runs on")


class RackView(_Out):
    """A rack and its hosts."""

    name: str
    hosts: tuple[HostTile, ...]


class LeafView(_Out):
    """A leaf (ToR or rail) switch and its uplink."""

    name: str
    rail: int | None
    uplink_gbit: float | None


class PodView(_Out):
    """A pod: its leaves, racks and uplink."""

    name: str
    uplink_gbit: float | None
    leaves: tuple[LeafView, ...]
    racks: tuple[RackView, ...]


class ZoneView(_Out):
    """A zone: its pods and interconnect."""

    name: str
    region: str | None
    uplink_gbit: float | None
    pods: tuple[PodView, ...]


class EdgeTier(_Out):
    """One kind of link of the cost model: default latency and bandwidth."""

    kind: str
    latency_us: float
    bandwidth_gb_per_s: float


class DomainView(_Out):
    """An NVLink domain spanning hosts."""

    name: str
    hosts: tuple[str, ...]
    nvlinks_per_gpu: int


class Overview(_Out):
    """The whole fabric at cluster zoom (no GPU-level detail)."""

    version: str = Field(description="changes with the fabric, placement or workers")
    summary: FabricSummary
    workers: int = Field(description="registered workers")
    instances: int = Field(description="instances of the placement in force")
    tiers: tuple[EdgeTier, ...]
    nvlink_domains: tuple[DomainView, ...]
    zones: tuple[ZoneView, ...]


class GpuCell(_Out):
    """One GPU: what runs on it."""

    index: int
    name: str
    role: Role | None
    instance: str | None = Field(description="placement instance holding it")
    worker: str | None = Field(description="registered worker running on it")
    tp: int | None = Field(description="tensor-parallel size of its instance or worker")


class PodHost(_Out):
    """A host at pod zoom: its GPUs."""

    name: str
    rack: str
    gpu_type: str
    domain: str | None
    gpus: tuple[GpuCell, ...]


class InstanceView(_Out):
    """A serving instance of the placement, a registered worker, or both (a worker
    registered under an instance's id), and its GPUs."""

    id: str
    placed: bool = Field(description="an instance of the placement in force")
    live: bool = Field(description="a registered worker")
    role: Role
    gpus: tuple[str, ...]
    hosts: tuple[str, ...]


class PairingView(_Out):
    """A preferred prefill → decode pairing of the placement."""

    prefill: str
    decode: str
    weight: float
    tier: str


class PodDetail(_Out):
    """One pod at GPU level, with the instances on it and their pairings."""

    version: str
    zone: str
    name: str
    uplink_gbit: float | None
    leaves: tuple[LeafView, ...]
    hosts: tuple[PodHost, ...]
    instances: tuple[InstanceView, ...]
    pairings: tuple[PairingView, ...] = Field(description="every pairing touching the pod")
    partners: dict[str, tuple[str, ...]] = Field(
        description="hosts of the instances outside the pod that pair with ones inside")


class NicView(_Out):
    """A NIC and where it lands."""

    device: str
    gbit: float
    numa: int
    pcie_switch: str | None
    leaf: str | None
    rail: int | None


class HostDetail(_Out):
    """One host in full: GPUs, NICs, the GPU link matrix and its NVLink domain."""

    version: str
    name: str
    zone: str
    pod: str
    rack: str
    gpu_type: str
    sockets: int
    gpus: tuple[GpuCell, ...]
    gpu_numa: tuple[int, ...]
    gpu_pcie: tuple[str | None, ...]
    gpu_nic: tuple[str | None, ...]
    nics: tuple[NicView, ...]
    gpu_links: tuple[tuple[str, ...], ...]
    domain: DomainView | None
    instances: tuple[InstanceView, ...]
    pairings: tuple[PairingView, ...]
    partners: dict[str, tuple[str, ...]]
