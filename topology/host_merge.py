"""Merging what is known about one host: template, nvidia-smi, NCCL XML and LLDP.

Measured captures win over a template, but every disagreement is recorded as a
conflict (the builder decides whether conflicts stop the build). Order:

1. a template (or, without one, the nvidia-smi / NCCL capture alone) gives the shape;
2. ``nvidia-smi topo -m`` gives GPUs, NICs, the GPU link matrix, NUMA placement and
   PCIe switches (devices joined by PIX/PXB share a switch);
3. NCCL XML gives NIC speeds (and the shape when nothing else does);
4. the rack's configuration (ToR or rails) and LLDP say which leaf each NIC lands on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from topology.errors import NotFoundError
from topology.lldp import LldpCapture
from topology.nccl import NcclTopology
from topology.nvsmi import LinkType, NvsmiTopology, SmiLink, pcie_level
from topology.spec import GpuSpec, HostSpec, NicSpec
from topology.templates import HostTemplate, host_from_template


@dataclass
class MergeReport:
    """Warnings and conflicts found while building a fabric."""

    warnings: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HostInputs:
    """Everything known about one host before merging."""

    name: str
    rack: str
    template: HostTemplate | None
    nic_gbit: float
    rack_leaves: tuple[str | None, ...] = ()
    nvsmi: NvsmiTopology | None = None
    nccl: NcclTopology | None = None
    lldp: LldpCapture | None = None
    netdevs: dict[str, str] = field(default_factory=dict)


def merge_host(inputs: HostInputs, report: MergeReport) -> HostSpec:
    """Build one host's spec from all its inputs, recording disagreements in ``report``."""
    host = _shape(inputs, report)
    if inputs.nccl is not None:
        host = _apply_nccl_speeds(host, inputs.nccl)
    host = _apply_rack_leaves(host, inputs.rack_leaves)
    if inputs.lldp is not None:
        host = _apply_lldp(host, inputs, report)
    sources = tuple(s.source for s in (inputs.nvsmi, inputs.nccl, inputs.lldp) if s is not None)
    return host.model_copy(update={"sources": sources})


def _shape(inputs: HostInputs, report: MergeReport) -> HostSpec:
    base = host_from_template(inputs.template, inputs.name, inputs.rack) \
        if inputs.template else None
    measured = None
    if inputs.nvsmi is not None:
        gbit = inputs.template.nic_gbit if inputs.template else inputs.nic_gbit
        measured = host_from_nvsmi(inputs.nvsmi, inputs.name, inputs.rack, gbit, report)
    elif inputs.nccl is not None and base is None:
        measured = host_from_nccl(inputs.nccl, inputs.name, inputs.rack, inputs.nic_gbit)
    if base is not None and measured is not None:
        _compare_counts(base, measured, report)
    if measured is not None:
        return measured.model_copy(update={"gpu_type": base.gpu_type if base else "unknown"})
    if base is None:
        raise NotFoundError("host template", "(none)",
                            f"host {inputs.name} has no template and no capture")
    return base


def _compare_counts(base: HostSpec, measured: HostSpec, report: MergeReport) -> None:
    for what, a, b in (("GPUs", len(base.gpus), len(measured.gpus)),
                       ("NICs", len(base.nics), len(measured.nics))):
        if a != b:
            report.conflicts.append(f"host {base.name}: template has {a} {what}, "
                                    f"the capture shows {b} (the capture is used)")


class _Links:
    """One capture's links by ordered device pair: the merge asks a few hundred times
    per host, and :meth:`NvsmiTopology.link` checks its arguments on every call."""

    def __init__(self, topo: NvsmiTopology) -> None:
        self.topo = topo
        self.by_pair: dict[tuple[str, str], SmiLink] = {}
        for link in topo.links:
            self.by_pair[(link.a, link.b)] = self.by_pair[(link.b, link.a)] = link

    def type(self, a: str, b: str) -> LinkType:
        return self.by_pair[(a, b)].type

    def nearest_nics(self, gpu: str) -> list[str]:
        """The NICs with the lowest PCIe level to ``gpu``, in column order."""
        levels = [(pcie_level(self.type(gpu, nic.name)), nic.name) for nic in self.topo.nics]
        best = min(level for level, _ in levels)
        return [name for level, name in levels if level == best]


def host_from_nvsmi(topo: NvsmiTopology, name: str, rack: str, nic_gbit: float,
                    report: MergeReport) -> HostSpec:
    """A host spec from one ``nvidia-smi topo -m`` capture."""
    links = _Links(topo)
    switches = _pcie_switch_groups(topo)
    gpu_numa = _gpu_numa(topo)
    nics = tuple(NicSpec(device=nic.device, gbit=nic_gbit,
                         numa=_nic_numa(links, nic.name, gpu_numa),
                         pcie_switch=switches.get(nic.name)) for nic in topo.nics)
    nearest = _nearest_nics(links, name, report)
    gpus = tuple(GpuSpec(index=g.index, numa=gpu_numa[g.name], pcie_switch=switches.get(g.name),
                         nic=nearest.get(g.name)) for g in topo.gpus)
    matrix = tuple(tuple(_code(links, a.name, b.name) for b in topo.gpus) for a in topo.gpus)
    return HostSpec(name=name, rack=rack, sockets=max(len(set(gpu_numa.values())), 1),
                    gpus=gpus, nics=nics, gpu_links=matrix)


def _code(links: _Links, a: str, b: str) -> str:
    if a == b:
        return "X"
    link = links.by_pair[(a, b)]
    return f"NV{link.nvlinks}" if link.type == LinkType.NV else link.type.value


def _pcie_switch_groups(topo: NvsmiTopology) -> dict[str, str]:
    """Devices joined by PIX/PXB links share a PCIe switch (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for link in topo.links:
        if link.type in (LinkType.PIX, LinkType.PXB):
            parent[find(link.a)] = find(link.b)
    order = [d.name for d in topo.gpus] + [n.name for n in topo.nics]
    joined = set(parent) | set(parent.values())
    roots: dict[str, str] = {}
    groups = {}
    for device in order:
        if device in joined:
            root = find(device)
            groups[device] = roots.setdefault(root, f"sw{len(roots)}")
    return groups


def _gpu_numa(topo: NvsmiTopology) -> dict[str, int]:
    """NUMA node per GPU: the NUMA affinity, else one node per distinct CPU affinity."""
    by_affinity: dict[str | None, int] = {}
    result = {}
    for gpu in topo.gpus:
        numa = gpu.numa_affinity
        if isinstance(numa, list):
            numa = numa[0] if numa else None
        if numa is None:
            numa = by_affinity.setdefault(gpu.cpu_affinity, len(by_affinity))
        result[gpu.name] = numa
    return result


def _nic_numa(links: _Links, nic: str, gpu_numa: dict[str, int]) -> int:
    best = min(links.topo.gpus, key=lambda g: pcie_level(links.type(g.name, nic)), default=None)
    if best is None or links.type(best.name, nic) == LinkType.SYS:
        return 0
    return gpu_numa[best.name]


def _nearest_nics(links: _Links, host: str, report: MergeReport) -> dict[str, str]:
    """Each GPU's NIC: the nearest one; ties go to the NIC at the GPU's own position.

    On boards where every GPU-NIC cell is SYS (GB200) nvidia-smi says nothing about
    locality, so GPU i is assumed to use NIC i, with a warning.
    """
    topo = links.topo
    if not topo.nics:
        return {}
    devices = {n.name: n.device for n in topo.nics}
    if all(links.type(g.name, n.name) == LinkType.SYS for g in topo.gpus for n in topo.nics):
        report.warnings.append(f"host {host}: every GPU-NIC pair is SYS (GB200-like); "
                               "GPU i is assumed to use NIC i")
    result = {}
    for i, gpu in enumerate(topo.gpus):
        names = links.nearest_nics(gpu.name)
        own = topo.nics[i % len(topo.nics)].name
        result[gpu.name] = devices[own if own in names else names[0]]
    return result


def host_from_nccl(topo: NcclTopology, name: str, rack: str, nic_gbit: float) -> HostSpec:
    """A host spec from an NCCL topology dump alone."""
    gpus = tuple(GpuSpec(index=i, numa=g.numa or 0, pcie_switch=topo.pcie_switch_of(g.busid),
                         nic=next(iter(topo.nearest_nets(g.busid)), None))
                 for i, g in enumerate(topo.gpus))
    nics = tuple(NicSpec(device=n.name, gbit=(n.speed_mbps / 1000) if n.speed_mbps else nic_gbit,
                         numa=n.numa or 0,
                         pcie_switch=topo.pcie_switch_of(n.busid) if n.busid else None)
                 for n in topo.nets)
    matrix = tuple(tuple(_nccl_code(topo, a.busid, b.busid) if a.busid != b.busid else "X"
                         for b in topo.gpus) for a in topo.gpus)
    return HostSpec(name=name, rack=rack, sockets=max(len({g.numa for g in gpus}), 1),
                    gpus=gpus, nics=nics, gpu_links=matrix)


def _nccl_code(topo: NcclTopology, a: str, b: str) -> str:
    count = topo.nvlink_count(a, b)
    if count:
        return f"NV{count}"
    switch_a, switch_b = topo.pcie_switch_of(a), topo.pcie_switch_of(b)
    if switch_a is not None and switch_a == switch_b:
        return "PIX"
    numa = {g.busid: g.numa for g in topo.gpus}
    return "NODE" if numa[a] == numa[b] else "SYS"


def _apply_nccl_speeds(host: HostSpec, topo: NcclTopology) -> HostSpec:
    speeds = {n.name: n.speed_mbps / 1000 for n in topo.nets if n.speed_mbps}
    nics = tuple(n.model_copy(update={"gbit": speeds[n.device]}) if n.device in speeds else n
                 for n in host.nics)
    return host.model_copy(update={"nics": nics})


def _apply_rack_leaves(host: HostSpec, leaves: tuple[str | None, ...]) -> HostSpec:
    if not leaves:
        return host
    nics = tuple(n.model_copy(update={"leaf": leaves[i] if i < len(leaves) else leaves[-1]})
                 if n.leaf is None else n for i, n in enumerate(_by_device(host.nics)))
    return host.model_copy(update={"nics": nics})


def _by_device(nics: tuple[NicSpec, ...]) -> list[NicSpec]:
    """NICs in natural device order (mlx5_2 before mlx5_10)."""
    def key(nic: NicSpec) -> tuple[str, int, str]:
        stem = nic.device.rstrip("0123456789")
        digits = nic.device[len(stem):].lstrip("0") or "0"
        # compared as text of a length: a name's digits can be any number of them
        return stem, len(digits) if nic.device != stem else -1, digits
    return sorted(nics, key=key)


def _apply_lldp(host: HostSpec, inputs: HostInputs, report: MergeReport) -> HostSpec:
    assert inputs.lldp is not None
    to_device = {netdev: dev for dev, netdev in inputs.netdevs.items()}
    devices = {n.device for n in host.nics}
    seen: dict[str, tuple[str, str | None]] = {}
    for iface, sightings in inputs.lldp.by_interface().items():
        device = to_device.get(iface, iface)
        neighbours = [n for n in sightings if n.chassis_name or n.chassis_id]
        if device not in devices or not neighbours:
            continue  # a neighbour that names no switch places nothing
        switches = {n.chassis_name or n.chassis_id or "" for n in neighbours}
        if len(switches) > 1:
            report.conflicts.append(f"host {host.name}: NIC {device} ({iface}) is seen on "
                                    f"several switches: {', '.join(sorted(switches))}")
        seen[device] = (sorted(switches)[0], neighbours[0].port_id)
    _warn_unmapped(host, inputs, seen, report)
    nics = tuple(_lldp_nic(host.name, n, seen.get(n.device), report) for n in host.nics)
    return host.model_copy(update={"nics": nics})


def _lldp_nic(host: str, nic: NicSpec, observed: tuple[str, str | None] | None,
              report: MergeReport) -> NicSpec:
    if observed is None:
        return nic
    leaf, port = observed
    if nic.leaf is not None and nic.leaf != leaf:
        report.conflicts.append(f"host {host}: NIC {nic.device} is on {leaf} per LLDP, "
                                f"but the inventory places it on {nic.leaf} (LLDP is used)")
    return nic.model_copy(update={"leaf": leaf, "port": port})


def _warn_unmapped(host: HostSpec, inputs: HostInputs, seen: Mapping[str, object],
                   report: MergeReport) -> None:
    missing = [n.device for n in host.nics if n.device not in seen]
    if missing and inputs.lldp is not None and inputs.lldp.neighbors:
        report.warnings.append(
            f"host {host.name}: LLDP has no neighbour for {', '.join(missing)}; map RDMA "
            "devices to interfaces with `netdevs` in the inventory")
