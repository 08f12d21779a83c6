"""The fabric at three zooms (cluster, pod, host) with who runs where on it.

:class:`Occupancy` maps each GPU to the placement instance and the registered worker on
it; :class:`FabricIndex` groups a fabric's hosts by pod and rack once per fabric. The
builders are plain functions over both; the cluster view is one tile per host (counts
only), so its size grows with hosts, never with GPUs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from api.ui.models import (
    DomainView,
    EdgeTier,
    GpuCell,
    HostDetail,
    HostTile,
    InstanceView,
    LeafView,
    NicView,
    Overview,
    PairingView,
    PodDetail,
    PodHost,
    PodView,
    RackView,
    Role,
    ZoneView,
)
from scheduler.placement import Placement
from scheduler.transfer.plan import WorkerRegistration
from topology.errors import NotFoundError
from topology.spec import FabricSpec, HostSpec, LeafSpec, nvlink_count
from topology.summary import summarize


@dataclass(frozen=True, slots=True)
class GpuUse:
    """What runs on one GPU: a placed instance, a registered worker, or both."""

    role: Role
    instance: str | None
    worker: str | None
    tp: int


class Occupancy:
    """Who runs on which GPU: the placement's instances, then the registered workers
    (a live worker's role wins where both name a GPU)."""

    def __init__(self, placement: Placement | None,
                 workers: Sequence[WorkerRegistration]) -> None:
        self.uses: dict[str, GpuUse] = {}
        self.by_id: dict[str, InstanceView] = {}
        self.pairings: tuple[PairingView, ...] = ()
        if placement is not None:
            self._place(placement)
        for reg in workers:
            self._register(reg)
        self.placed = len(placement.instances) if placement is not None else 0
        self.workers = len(workers)

    def _place(self, placement: Placement) -> None:
        for inst in placement.instances:
            use = GpuUse(inst.role, inst.id, None, len(inst.gpus))
            self.uses.update(dict.fromkeys(inst.gpus, use))
            self.by_id[inst.id] = InstanceView(id=inst.id, placed=True, live=False,
                                               role=inst.role, gpus=inst.gpus,
                                               hosts=_hosts_of(inst.gpus))
        self.pairings = tuple(PairingView(prefill=p.prefill, decode=p.decode, weight=p.weight,
                                          tier=p.tier) for p in placement.pairings)

    def _register(self, reg: WorkerRegistration) -> None:
        if not reg.gpus:
            return
        for gpu in reg.gpus:
            placed = self.uses.get(gpu)
            self.uses[gpu] = GpuUse(reg.role, placed.instance if placed else None, reg.name,
                                    len(reg.gpus))
        self.by_id[reg.name] = InstanceView(id=reg.name, placed=reg.name in self.by_id,
                                            live=True, role=reg.role, gpus=reg.gpus,
                                            hosts=_hosts_of(reg.gpus))

    def cell(self, host: HostSpec, index: int) -> GpuCell:
        """One GPU of ``host`` as the page draws it."""
        name = host.gpu_name(index)
        use = self.uses.get(name)
        if use is None:
            return GpuCell(index=index, name=name, role=None, instance=None, worker=None,
                           tp=None)
        return GpuCell(index=index, name=name, role=use.role, instance=use.instance,
                       worker=use.worker, tp=use.tp)

    def tile(self, host: HostSpec, domain: str | None) -> HostTile:
        """``host`` at cluster zoom: GPUs per role."""
        roles = {"prefill": 0, "decode": 0, "both": 0}
        live = 0
        for gpu in host.gpus:
            use = self.uses.get(host.gpu_name(gpu.index))
            if use is not None:
                roles[use.role] += 1
                live += use.worker is not None
        return HostTile(name=host.name, gpus=len(host.gpus), gpu_type=host.gpu_type,
                        nvlink=_has_nvlink(host), domain=domain, live=live, **roles)

    def around(self, hosts: set[str]) -> tuple[tuple[InstanceView, ...],
                                                tuple[PairingView, ...],
                                                dict[str, tuple[str, ...]]]:
        """Instances on ``hosts``, the pairings touching them, and the hosts of their
        partners elsewhere."""
        inside = [i for i in self.by_id.values() if hosts.intersection(i.hosts)]
        ids = {i.id for i in inside}
        pairings = tuple(p for p in self.pairings if p.prefill in ids or p.decode in ids)
        wanted = {p.prefill for p in pairings} | {p.decode for p in pairings}
        partners = {name: self.by_id[name].hosts for name in sorted(wanted - ids)
                    if name in self.by_id}
        return tuple(inside), pairings, partners


def _hosts_of(gpus: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(gpu.split("/", 1)[0] for gpu in gpus))


def _has_nvlink(host: HostSpec) -> bool:
    return any(nvlink_count(code) for row in host.gpu_links for code in row)


class FabricIndex:
    """A fabric's hosts grouped by pod and rack, looked up by name (built once per
    fabric)."""

    def __init__(self, spec: FabricSpec) -> None:
        self.spec = spec
        self.pod_of_rack = {rack.name: rack.pod for rack in spec.racks}
        self.zone_of_pod = {pod.name: pod.zone for pod in spec.pods}
        self.hosts_by_rack: dict[str, list[HostSpec]] = defaultdict(list)
        for host in spec.hosts:
            self.hosts_by_rack[host.rack].append(host)
        self.host_by_name = {host.name: host for host in spec.hosts}
        self.racks_by_pod: dict[str, list[str]] = defaultdict(list)
        for rack in spec.racks:
            self.racks_by_pod[rack.pod].append(rack.name)
        self.leaves_by_pod: dict[str, list[LeafSpec]] = defaultdict(list)
        self.leaf_by_name = {leaf.name: leaf for leaf in spec.leaves}
        for leaf in spec.leaves:
            self.leaves_by_pod[leaf.pod].append(leaf)
        self.domains = {d.name: DomainView(name=d.name, hosts=d.hosts,
                                           nvlinks_per_gpu=d.nvlinks_per_gpu)
                        for d in spec.nvlink_domains}
        self.domain_of_host = {host: d.name for d in spec.nvlink_domains for host in d.hosts}

    def pod(self, name: str) -> tuple[str, list[HostSpec]]:
        """A pod's zone and hosts, rack by rack (404 for an unknown pod)."""
        zone = self.zone_of_pod.get(name)
        if zone is None:
            raise NotFoundError("pod", name)
        return zone, [h for rack in self.racks_by_pod[name] for h in self.hosts_by_rack[rack]]

    def host(self, name: str) -> HostSpec:
        """A host by name (404 when the fabric has none of that name)."""
        host = self.host_by_name.get(name)
        if host is None:
            raise NotFoundError("host", name)
        return host

    def leaves(self, pod: str) -> tuple[LeafView, ...]:
        """A pod's leaves."""
        return tuple(LeafView(name=leaf.name, rail=leaf.rail, uplink_gbit=leaf.uplink_gbit)
                     for leaf in self.leaves_by_pod[pod])


def overview(index: FabricIndex, occupancy: Occupancy, version: str) -> Overview:
    """The cluster zoom: zones → pods → leaves and racks → host tiles."""
    spec = index.spec
    zones = tuple(ZoneView(name=z.name, region=z.region, uplink_gbit=z.uplink_gbit,
                           pods=tuple(_pod_view(index, occupancy, p.name, p.uplink_gbit)
                                      for p in spec.pods if p.zone == z.name))
                  for z in spec.zones)
    tiers = tuple(EdgeTier(kind=kind, latency_us=figures.latency_us,
                           bandwidth_gb_per_s=figures.bandwidth_gb_per_s)
                  for kind, figures in spec.links.edges)
    return Overview(version=version, summary=summarize(spec), workers=occupancy.workers,
                    instances=occupancy.placed, tiers=tiers,
                    nvlink_domains=tuple(index.domains.values()), zones=zones)


def _pod_view(index: FabricIndex, occupancy: Occupancy, pod: str,
              uplink: float | None) -> PodView:
    racks = tuple(RackView(name=rack, hosts=tuple(
        occupancy.tile(h, index.domain_of_host.get(h.name)) for h in index.hosts_by_rack[rack]))
        for rack in index.racks_by_pod[pod])
    return PodView(name=pod, uplink_gbit=uplink, leaves=index.leaves(pod), racks=racks)


def pod_detail(index: FabricIndex, occupancy: Occupancy, name: str, version: str) -> PodDetail:
    """The pod zoom: every host's GPUs, and the instances and pairings on them."""
    zone, hosts = index.pod(name)
    uplink = next(p.uplink_gbit for p in index.spec.pods if p.name == name)
    rows = tuple(PodHost(name=h.name, rack=h.rack, gpu_type=h.gpu_type,
                         domain=index.domain_of_host.get(h.name),
                         gpus=tuple(occupancy.cell(h, g.index) for g in h.gpus)) for h in hosts)
    instances, pairings, partners = occupancy.around({h.name for h in hosts})
    return PodDetail(version=version, zone=zone, name=name, uplink_gbit=uplink,
                     leaves=index.leaves(name), hosts=rows, instances=instances,
                     pairings=pairings, partners=partners)


def host_detail(index: FabricIndex, occupancy: Occupancy, name: str,
                version: str) -> HostDetail:
    """The host zoom: GPUs with what runs on them, NICs and their leaves, link matrix."""
    host = index.host(name)
    pod = index.pod_of_rack.get(host.rack, "")
    domain_name = index.domain_of_host.get(host.name)
    instances, pairings, partners = occupancy.around({host.name})
    nics = tuple(NicView(device=n.device, gbit=n.gbit, numa=n.numa, pcie_switch=n.pcie_switch,
                         leaf=n.leaf, rail=_rail(index, n.leaf)) for n in host.nics)
    return HostDetail(
        version=version, name=host.name, zone=index.zone_of_pod.get(pod, ""), pod=pod,
        rack=host.rack, gpu_type=host.gpu_type, sockets=host.sockets,
        gpus=tuple(occupancy.cell(host, g.index) for g in host.gpus),
        gpu_numa=tuple(g.numa for g in host.gpus),
        gpu_pcie=tuple(g.pcie_switch for g in host.gpus),
        gpu_nic=tuple(g.nic for g in host.gpus), nics=nics, gpu_links=host.gpu_links,
        domain=index.domains.get(domain_name) if domain_name else None,
        instances=instances, pairings=pairings, partners=partners)


def _rail(index: FabricIndex, leaf: str | None) -> int | None:
    found = index.leaf_by_name.get(leaf) if leaf else None
    return found.rail if found is not None else None
