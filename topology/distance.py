"""The distance/cost model: tier, hops, latency, bandwidth and transfer time between GPUs.

Routers ask this millions of times, so nothing here searches a graph per query. At
construction every GPU gets *coordinates* (host, local index, leaf, pod, zone, NVLink
domain) plus its path to its nearest NIC; each distinct host shape gets its intra-host
matrices once (from the same PCIe/NVLink subgraph as :mod:`topology.graph`). A pair
query then compares coordinates; the vectorised forms do it for one GPU against many
with numpy.

Model (documented in docs/cost-model.md):

* same host: NVLink when the pair is NVLinked (and NVLink may carry KV between
  processes), else the PCIe/CPU path;
* same multi-host NVLink domain: NVLink through the domain's switch;
* otherwise each GPU leaves through its nearest NIC: the tier is set by the first
  switch the two NICs share (leaf, pod aggregation, zone spine, or the zone link);
  latency sums the edges, bandwidth is the minimum of both GPU→NIC paths and every
  uplink climbed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import networkx as nx
import numpy as np
import numpy.typing as npt

from topology.errors import NotFoundError
from topology.graph import gpu_node, host_pcie_graph, nic_node, nvswitch_based, path_figures
from topology.spec import PCIE_CODES, UNKNOWN_UPLINK_PREFIX, FabricSpec, HostSpec, nvlink_count
from topology.tiers import LinkConfig, Tier

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_CODE_TIER = {"PIX": Tier.PCIE_SWITCH, "PXB": Tier.PCIE_SWITCH, "PHB": Tier.HOST_BRIDGE,
              "NODE": Tier.HOST_BRIDGE, "SYS": Tier.CROSS_SOCKET}
#: Switch-to-switch hops above the two NIC→leaf edges, per cross-host tier.
_INT_COLUMNS = frozenset({"host", "local", "rack", "leaf", "pod", "zone", "nvd", "nic_hops"})
_FABRIC_HOPS = {Tier.SAME_LEAF: 0, Tier.SAME_POD: 2, Tier.SAME_ZONE: 4, Tier.CROSS_ZONE: 6}


@dataclass(frozen=True)
class PairCost:
    """Everything the cost model says about moving bytes from GPU ``a`` to GPU ``b``."""

    a: str
    b: str
    tier: Tier
    hops: int
    latency_us: float
    bandwidth_gb_per_s: float

    def transfer_time_s(self, nbytes: int) -> float:
        """Seconds to move ``nbytes``: latency plus bytes over the bottleneck bandwidth."""
        return self.latency_us * 1e-6 + nbytes / (self.bandwidth_gb_per_s * 1e9)


@dataclass(frozen=True)
class Locality:
    """The locality domains a GPU sits in, coarse to fine."""

    zone: str
    region: str | None
    pod: str | None
    rack: str
    leaf: str | None
    host: str
    nvlink_domain: str | None


@dataclass(frozen=True)
class HostMatrices:
    """Intra-host tier, latency, bandwidth and hops between local GPUs, and GPU→NIC paths."""

    tier: IntArray
    latency: FloatArray
    bandwidth: FloatArray
    hops: IntArray
    nic: tuple[str | None, ...]
    nic_latency: tuple[float, ...]
    nic_bandwidth: tuple[float, ...]
    nic_hops: tuple[int, ...]


class DistanceModel:
    """Pair queries over a fabric without graph search (see module docstring)."""

    def __init__(self, spec: FabricSpec, nvlink_across_processes: bool | None = None) -> None:
        self.spec = spec
        allow = spec.links.nvlink_across_processes
        self.nvlink_across_processes = allow if nvlink_across_processes is None \
            else nvlink_across_processes
        self.names: list[str] = spec.gpu_names()
        self._index = {name: i for i, name in enumerate(self.names)}
        _Coordinates(self).fill()

    # -- lookups -------------------------------------------------------------------
    def index(self, gpu: str | int) -> int:
        """Integer index of a GPU given by name (``host/gpuN``) or index."""
        if type(gpu) is int and 0 <= gpu < len(self.names):
            return gpu
        if isinstance(gpu, int | np.integer):
            if 0 <= gpu < len(self.names):
                return int(gpu)
            raise NotFoundError("GPU index", str(gpu))
        found = self._index.get(gpu)
        if found is None:
            host, _, local = gpu.rpartition("/")
            found = self._index.get(f"{host}/{local.lower()}")
        if found is None:
            raise NotFoundError("GPU", gpu, "GPUs are named HOST/gpuN")
        return found

    def knows(self, gpu: str) -> bool:
        """Whether the fabric has a GPU of exactly this name (one dict lookup)."""
        return gpu in self._index

    def locality(self, gpu: str | int) -> Locality:
        """Locality domains of one GPU."""
        g = self.index(gpu)
        leaf, pod = int(self.leaf_of[g]), int(self.pod_of[g])
        domain = int(self.nvd_of[g])
        return Locality(
            zone=self._zones[int(self.zone_of[g])], region=self._regions[int(self.zone_of[g])],
            pod=self._pods[pod] if pod >= 0 else None, rack=self._racks[int(self.rack_of[g])],
            leaf=self._leaves[leaf] if leaf >= 0 else None,
            host=self.spec.hosts[int(self.host_of[g])].name,
            nvlink_domain=self._domains[domain] if domain >= 0 else None)

    # -- scalar queries --------------------------------------------------------------
    def tier(self, a: str | int, b: str | int) -> Tier:
        """Topology tier between two GPUs."""
        return Tier(self._scalar(self.index(a), self.index(b))[0])

    def pair(self, a: str | int, b: str | int) -> PairCost:
        """Full cost figures for a pair of GPUs."""
        ia, ib = self.index(a), self.index(b)
        tier, lat, bw, hops = self._scalar(ia, ib)
        return PairCost(self.names[ia], self.names[ib], Tier(tier), hops, lat, bw)

    def _scalar(self, a: int, b: int) -> tuple[int, float, float, int]:
        """One pair in plain Python (numpy's per-call overhead dominates single queries)."""
        c = self._py
        host = c["host"][a]
        if host == c["host"][b]:
            m = self._host_lists[host]
            la, lb = c["local"][a], c["local"][b]
            return m[0][la][lb], m[1][la][lb], m[2][la][lb], m[3][la][lb]
        domain = c["nvd"][a]
        if domain >= 0 and domain == c["nvd"][b] and self.nvlink_across_processes:
            return (Tier.NVLINK, 2 * self._nvlink_lat, min(c["nvd_bw"][a], c["nvd_bw"][b]), 2)
        tier = self._scalar_tier(a, b)
        return tier, *self._scalar_figures(a, b, tier)

    def _scalar_tier(self, a: int, b: int) -> int:
        c = self._py
        if c["leaf"][a] >= 0 and c["leaf"][a] == c["leaf"][b]:
            return Tier.SAME_LEAF
        if c["pod"][a] >= 0 and c["pod"][a] == c["pod"][b]:
            return Tier.SAME_POD
        return Tier.SAME_ZONE if c["zone"][a] == c["zone"][b] else Tier.CROSS_ZONE

    def _scalar_figures(self, a: int, b: int, tier: int) -> tuple[float, float, int]:
        c = self._py
        lat = c["nic_lat"][a] + c["nic_lat"][b]
        bw = min(c["nic_bw"][a], c["nic_bw"][b])
        if tier >= Tier.SAME_POD:
            lat += self._leaf_agg_lat2
            bw = min(bw, c["leaf_up"][a], c["leaf_up"][b])
        if tier >= Tier.SAME_ZONE:
            lat += self._agg_spine_lat2
            bw = min(bw, c["pod_up"][a], c["pod_up"][b])
        if tier == Tier.CROSS_ZONE:
            lat += c["zone_lat"][a] + c["zone_lat"][b]
            bw = min(bw, c["zone_up"][a], c["zone_up"][b])
        return lat, bw, c["nic_hops"][a] + c["nic_hops"][b] + _FABRIC_HOPS[Tier(tier)]

    def transfer_time(self, a: str | int, b: str | int, nbytes: int) -> float:
        """Seconds to move ``nbytes`` from GPU ``a`` to GPU ``b`` on an idle fabric."""
        return self.pair(a, b).transfer_time_s(nbytes)

    # -- vectorised queries ------------------------------------------------------------
    def tiers_from(self, a: int, bs: IntArray) -> IntArray:
        """Tiers from GPU ``a`` to each GPU index in ``bs``."""
        return self._from(a, bs)[0]

    def transfer_times_from(self, a: int, bs: IntArray, nbytes: int | FloatArray) -> FloatArray:
        """Seconds to move ``nbytes`` from GPU ``a`` to each GPU in ``bs``."""
        _, lat, bw, _ = self._from(a, bs)
        result: FloatArray = lat * 1e-6 + np.asarray(nbytes, dtype=np.float64) / (bw * 1e9)
        return result

    def costs_from(self, a: int, bs: IntArray) -> tuple[IntArray, FloatArray, FloatArray,
                                                        IntArray]:
        """(tier, latency µs, bandwidth GB/s, hops) from GPU ``a`` to each GPU in ``bs``."""
        return self._from(a, bs)

    def costs_grid(self, sources: IntArray, targets: IntArray
                   ) -> tuple[IntArray, FloatArray, FloatArray, IntArray]:
        """:meth:`costs_from` for every source GPU at once: arrays of shape (sources,
        targets), equal to its rows stacked (the same operations, element by element),
        at a cost that grows with the grid, not with the fabric."""
        a = np.asarray(sources, dtype=np.int64)[:, None]
        bs = np.asarray(targets, dtype=np.int64)
        shape = (len(a), len(bs))
        tier: IntArray = np.broadcast_to(self._cross_host_tier(a, bs), shape).copy()
        figures = self._cross_host_figures(a, bs, tier)
        lat: FloatArray = np.broadcast_to(figures[0], shape).copy()
        bw: FloatArray = np.broadcast_to(figures[1], shape).copy()
        hops: IntArray = np.broadcast_to(figures[2], shape).copy()
        if self.nvlink_across_processes:
            rows = np.flatnonzero(self.nvd_of[a[:, 0]] >= 0)
        else:
            rows = np.empty(0, dtype=np.int64)
        same_host = (self.host_of[bs] == self.host_of[a]).any(axis=1)
        for i in rows.tolist():  # row views: the overlays write into the grid
            self._overlay_nvlink_domain(int(a[i, 0]), bs, tier[i], lat[i], bw[i], hops[i])
        for i in np.flatnonzero(same_host).tolist():
            self._overlay_same_host(int(a[i, 0]), bs, tier[i], lat[i], bw[i], hops[i])
        return tier, lat, bw, hops

    def _from(self, a: int, bs: IntArray) -> tuple[IntArray, FloatArray, FloatArray, IntArray]:
        bs = np.asarray(bs, dtype=np.int64)
        tier = self._cross_host_tier(a, bs)
        lat, bw, hops = self._cross_host_figures(a, bs, tier)
        self._overlay_nvlink_domain(a, bs, tier, lat, bw, hops)
        self._overlay_same_host(a, bs, tier, lat, bw, hops)
        return tier, lat, bw, hops

    def _cross_host_tier(self, a: int | IntArray, bs: IntArray) -> IntArray:
        tier = np.where(self.zone_of[bs] == self.zone_of[a], Tier.SAME_ZONE, Tier.CROSS_ZONE)
        pod_a, leaf_a = self.pod_of[a], self.leaf_of[a]
        tier = np.where((self.pod_of[bs] == pod_a) & (pod_a >= 0), Tier.SAME_POD, tier)
        tier = np.where((self.leaf_of[bs] == leaf_a) & (leaf_a >= 0), Tier.SAME_LEAF, tier)
        return tier.astype(np.int64)

    def _cross_host_figures(self, a: int | IntArray, bs: IntArray,
                            tier: IntArray) -> tuple[FloatArray, FloatArray, IntArray]:
        pod_up = tier >= Tier.SAME_POD
        zone_up = tier >= Tier.SAME_ZONE
        cross = tier == Tier.CROSS_ZONE
        lat = (self.nic_lat[a] + self.nic_lat[bs] + pod_up * self._leaf_agg_lat2
               + zone_up * self._agg_spine_lat2 + cross * (self.zone_lat[a] + self.zone_lat[bs]))
        bw = np.minimum(self.nic_bw[a], self.nic_bw[bs])
        bw = np.where(pod_up, np.minimum(bw, np.minimum(self.leaf_up[a], self.leaf_up[bs])), bw)
        bw = np.where(zone_up, np.minimum(bw, np.minimum(self.pod_up[a], self.pod_up[bs])), bw)
        bw = np.where(cross, np.minimum(bw, np.minimum(self.zone_up[a], self.zone_up[bs])), bw)
        hops = self.nic_hops[a] + self.nic_hops[bs] + self._fabric_hops[tier]
        return lat.astype(np.float64), bw.astype(np.float64), hops.astype(np.int64)

    def _overlay_nvlink_domain(self, a: int, bs: IntArray, tier: IntArray, lat: FloatArray,
                               bw: FloatArray, hops: IntArray) -> None:
        domain = self.nvd_of[a]
        if domain < 0 or not self.nvlink_across_processes:
            return
        mask = self.nvd_of[bs] == domain
        tier[mask] = Tier.NVLINK
        lat[mask] = 2 * self._nvlink_lat
        bw[mask] = np.minimum(self.nvd_bw[a], self.nvd_bw[bs[mask]])
        hops[mask] = 2

    def _overlay_same_host(self, a: int, bs: IntArray, tier: IntArray, lat: FloatArray,
                           bw: FloatArray, hops: IntArray) -> None:
        mask = self.host_of[bs] == self.host_of[a]
        if not mask.any():
            return
        m = self._host_matrices[int(self.host_of[a])]
        la, lbs = int(self.local_of[a]), self.local_of[bs[mask]]
        tier[mask], lat[mask] = m.tier[la, lbs], m.latency[la, lbs]
        bw[mask], hops[mask] = m.bandwidth[la, lbs], m.hops[la, lbs]

    # -- shared links -------------------------------------------------------------------
    def path_links(self, a: str | int, b: str | int) -> tuple[str, ...]:
        """Directional ids of the shared links a transfer a→b crosses (for load tracking).

        Intra-host and NVLink-domain paths return ``()``: they share no fabric link.
        """
        ia, ib = self.index(a), self.index(b)
        tier = self.tier(ia, ib)
        if tier <= Tier.CROSS_SOCKET or tier == Tier.NVLINK:
            return ()
        up = [f"{self._nic_id[ia]}:tx"]
        down = [f"{self._nic_id[ib]}:rx"]
        for level, owner, minimum in (("leaf", self.leaf_of, Tier.SAME_POD),
                                      ("pod", self.pod_of, Tier.SAME_ZONE),
                                      ("zone", self.zone_of, Tier.CROSS_ZONE)):
            if tier >= minimum:
                up.append(f"{level}:{self._level_names(level)[int(owner[ia])]}:up")
                down.insert(0, f"{level}:{self._level_names(level)[int(owner[ib])]}:down")
        return tuple(up + down)

    def link_capacity_gb_per_s(self, link: str) -> float:
        """Capacity (GB/s, one direction) of a link id from :meth:`path_links`."""
        capacity = self._link_capacity.get(link.rsplit(":", 1)[0])
        if capacity is None:
            raise NotFoundError("link", link)
        return capacity

    def _level_names(self, level: str) -> list[str]:
        return {"leaf": self._leaves, "pod": self._pods, "zone": self._zones}[level]

    # Filled by _Coordinates.fill() -------------------------------------------------------
    host_of: IntArray
    local_of: IntArray
    rack_of: IntArray
    leaf_of: IntArray
    pod_of: IntArray
    zone_of: IntArray
    nvd_of: IntArray
    nvd_bw: FloatArray
    nic_lat: FloatArray
    nic_bw: FloatArray
    nic_hops: IntArray
    leaf_up: FloatArray
    pod_up: FloatArray
    zone_up: FloatArray
    zone_lat: FloatArray
    _host_matrices: list[HostMatrices]
    _host_lists: list[tuple[list[list[int]], list[list[float]], list[list[float]],
                            list[list[int]]]]
    _py: dict[str, list[Any]]
    _fabric_hops: IntArray
    _leaf_agg_lat2: float
    _agg_spine_lat2: float
    _nvlink_lat: float
    _nic_id: list[str]
    _link_capacity: dict[str, float]
    _zones: list[str]
    _regions: list[str | None]
    _pods: list[str]
    _racks: list[str]
    _leaves: list[str]
    _domains: list[str]


class _Coordinates:
    """Fills a DistanceModel's per-GPU arrays from its spec (construction only)."""

    def __init__(self, model: DistanceModel) -> None:
        self.m = model
        self.spec = model.spec
        self.links = model.spec.links

    def fill(self) -> None:
        m, spec, edges = self.m, self.spec, self.links.edges
        m._zones = [z.name for z in spec.zones]
        m._regions = [z.region for z in spec.zones]
        m._pods = [p.name for p in spec.pods]
        m._racks = [r.name for r in spec.racks]
        m._leaves = [leaf.name for leaf in spec.leaves]
        m._domains = [d.name for d in spec.nvlink_domains]
        m._leaf_agg_lat2 = 2 * edges.leaf_agg.latency_us
        m._agg_spine_lat2 = 2 * edges.agg_spine.latency_us
        m._nvlink_lat = edges.nvlink.latency_us
        m._fabric_hops = np.array([_FABRIC_HOPS.get(Tier(t), 0) for t in range(len(Tier))])
        self._fill_levels()
        self._fill_gpus()

    def _fill_levels(self) -> None:
        spec, edges, m = self.spec, self.links.edges, self.m
        zone_index = {name: i for i, name in enumerate(m._zones)}
        pod_index = {name: i for i, name in enumerate(m._pods)}
        self.zone_index, self.pod_index = zone_index, pod_index
        self.leaf_index = {name: i for i, name in enumerate(m._leaves)}
        self.leaf_pod = {f.name: pod_index[f.pod] for f in spec.leaves}
        self.rack_index = {name: i for i, name in enumerate(m._racks)}
        self.rack_pod = {r.name: pod_index[r.pod] for r in spec.racks}
        self.pod_zone = {p.name: zone_index[p.zone] for p in spec.pods}
        self.leaf_bw = {f.name: _gbs(f.uplink_gbit, edges.leaf_agg.bandwidth_gb_per_s)
                        for f in spec.leaves}
        self.pod_bw = {p.name: _gbs(p.uplink_gbit, edges.agg_spine.bandwidth_gb_per_s)
                       for p in spec.pods}
        self.zone_bw = [_gbs(z.uplink_gbit, edges.zone_link.bandwidth_gb_per_s)
                        for z in spec.zones]
        self.zone_latency = [z.uplink_latency_us if z.uplink_latency_us is not None
                             else edges.zone_link.latency_us for z in spec.zones]
        m._link_capacity = {f"leaf:{k}": v for k, v in self.leaf_bw.items()}
        m._link_capacity |= {f"pod:{k}": v for k, v in self.pod_bw.items()}
        m._link_capacity |= {f"zone:{z}": self.zone_bw[i] for z, i in zone_index.items()}

    def _fill_gpus(self) -> None:
        m, spec = self.m, self.spec
        domains = {h: (i, d.nvlinks_per_gpu) for i, d in enumerate(spec.nvlink_domains)
                   for h in d.hosts}
        columns: dict[str, list[float]] = {k: [] for k in (
            "host", "local", "rack", "leaf", "pod", "zone", "nvd", "nvd_bw", "nic_lat",
            "nic_bw", "nic_hops", "leaf_up", "pod_up", "zone_up", "zone_lat")}
        m._host_matrices, m._nic_id = [], []
        for h, host in enumerate(spec.hosts):
            domain = domains.get(host.name)
            matrices = host_matrices(host, self.links, m.nvlink_across_processes,
                                     domain is not None)
            m._host_matrices.append(matrices)
            for gpu in host.gpus:
                self._gpu_row(columns, h, host, gpu.index, matrices, domain)
        for key, values in columns.items():
            dtype = np.int64 if key in _INT_COLUMNS else np.float64
            setattr(m, f"{key}_of" if key in {"host", "local", "rack", "leaf", "pod", "zone",
                                             "nvd"} else key, np.array(values, dtype=dtype))
        m._py = {key: np.array(values, dtype=np.int64 if key in _INT_COLUMNS else np.float64
                               ).tolist() for key, values in columns.items()}
        shared: dict[int, Any] = {}  # hosts of one shape share their matrices object
        m._host_lists = [shared.get(id(h)) or shared.setdefault(id(h), (
            h.tier.tolist(), h.latency.tolist(), h.bandwidth.tolist(), h.hops.tolist()))
            for h in m._host_matrices]

    def _gpu_row(self, columns: dict[str, list[float]], h: int, host: HostSpec, local: int,
                 matrices: HostMatrices, domain: tuple[int, int] | None) -> None:
        nic_device = matrices.nic[local]
        nic = host.nic(nic_device) if nic_device else None
        leaf = host.leaf_of(nic) or self._unknown_leaf(host)
        pod = self.leaf_pod[leaf] if leaf in self.leaf_pod else self.rack_pod[host.rack]
        pod_name = self.m._pods[pod]
        zone = self.pod_zone[pod_name]
        per_link = self.links.edges.nvlink.bandwidth_gb_per_s
        values = {
            "host": h, "local": local, "rack": self.rack_index[host.rack],
            "leaf": self.leaf_index[leaf], "pod": pod, "zone": zone,
            "nvd": domain[0] if domain else -1,
            "nvd_bw": domain[1] * per_link if domain else 0.0,
            "nic_lat": matrices.nic_latency[local], "nic_bw": matrices.nic_bandwidth[local],
            "nic_hops": matrices.nic_hops[local],
            "leaf_up": self.leaf_bw[leaf], "pod_up": self.pod_bw[pod_name],
            "zone_up": self.zone_bw[zone], "zone_lat": self.zone_latency[zone],
        }
        for key, value in values.items():
            columns[key].append(value)
        self.m._nic_id.append(f"nic:{host.name}/{nic_device}" if nic_device
                              else f"nic:{host.name}/none")
        if nic is not None:
            self.m._link_capacity[f"nic:{host.name}/{nic_device}"] = nic.gbit / 8

    def _unknown_leaf(self, host: HostSpec) -> str:
        """A leaf of ``host`` alone, for fabrics that say nothing about its switch.

        Pricing it as its own leaf never claims that two hosts share a switch: their
        transfers cross the pod's aggregation layer, and the leaf's uplink is the host's
        own line rate. ``topo build`` writes such leaves into the fabric (with a warning);
        this covers fabric documents written before it did.
        """
        name = f"{UNKNOWN_UPLINK_PREFIX}{host.name}"
        if name not in self.leaf_index:
            self.leaf_index[name] = len(self.m._leaves)
            self.m._leaves.append(name)
            gbit = sum(nic.gbit for nic in host.nics)
            self.leaf_bw[name] = gbit / 8 if gbit else self.links.edges.leaf_agg.bandwidth_gb_per_s
            self.m._link_capacity[f"leaf:{name}"] = self.leaf_bw[name]
        return name


def _gbs(gbit: float | None, default: float) -> float:
    return gbit / 8 if gbit is not None else default


def host_matrices(host: HostSpec, links: LinkConfig, allow_nvlink: bool,
                  in_domain: bool) -> HostMatrices:
    """Intra-host matrices of a host; hosts of one shape share one computation."""
    return _shape_matrices(host_shape(host), links, allow_nvlink, in_domain)


def host_shape(host: HostSpec) -> HostSpec:
    """``host`` without what differs between hosts of one build: names, captures, and
    where its NICs are cabled (leaf, switch port, netdev). The intra-host matrices
    depend on the rest alone, so this is their cache key; keeping a per-host field in
    it made every host a cache miss (8,192 GPUs: 13 s of Dijkstra instead of 0.1 s)."""
    nics = tuple(nic if nic.leaf is nic.port is nic.netdev is None
                 else nic.model_copy(update={"leaf": None, "port": None, "netdev": None})
                 for nic in host.nics)
    return host.model_copy(update={"name": "_", "rack": "_", "sources": (),
                                    "nvlink_domain": None, "uplink_leaf": None,
                                    "nics": nics})


@lru_cache(maxsize=256)
def _shape_matrices(host: HostSpec, links: LinkConfig, allow_nvlink: bool,
                    in_domain: bool) -> HostMatrices:
    graph = host_pcie_graph(host, links)
    routes = dict(nx.all_pairs_dijkstra_path(graph, weight="latency_us"))
    n = len(host.gpus)
    tier = np.zeros((n, n), dtype=np.int64)
    lat, bw = np.zeros((n, n)), np.zeros((n, n))
    hops = np.zeros((n, n), dtype=np.int64)
    switch = in_domain or nvswitch_based(host)
    for i in range(n):
        for j in range(n):
            tier[i, j], lat[i, j], bw[i, j], hops[i, j] = _intra_pair(
                host, graph, routes, i, j, links, allow_nvlink, switch)
    return HostMatrices(tier, lat, bw, hops, *_nic_paths(host, graph, routes, links))


def _intra_pair(host: HostSpec, graph: nx.Graph, routes: dict[str, dict[str, list[str]]],
                i: int, j: int, links: LinkConfig, allow_nvlink: bool,
                switch: bool) -> tuple[int, float, float, int]:
    if i == j:
        return Tier.SAME_GPU, links.same_gpu.latency_us, links.same_gpu.bandwidth_gb_per_s, 0
    code = host.gpu_links[i][j]
    count = nvlink_count(code)
    if count and allow_nvlink:
        nv_hops = 2 if switch else 1
        return (Tier.NVLINK, nv_hops * links.edges.nvlink.latency_us,
                count * links.edges.nvlink.bandwidth_gb_per_s, nv_hops)
    path = routes[gpu_node(host.name, i)][gpu_node(host.name, j)]
    latency, bandwidth, n_hops = path_figures(graph, path)
    return _pcie_tier(host, i, j, code), latency, bandwidth, n_hops


def _pcie_tier(host: HostSpec, i: int, j: int, code: str) -> Tier:
    if code in PCIE_CODES:
        return _CODE_TIER[code]
    a, b = host.gpus[i], host.gpus[j]
    if a.pcie_switch is not None and a.pcie_switch == b.pcie_switch:
        return Tier.PCIE_SWITCH
    return Tier.HOST_BRIDGE if a.numa == b.numa else Tier.CROSS_SOCKET


def _nic_paths(host: HostSpec, graph: nx.Graph, routes: dict[str, dict[str, list[str]]],
               links: LinkConfig) -> tuple[tuple[str | None, ...], tuple[float, ...],
                                          tuple[float, ...], tuple[int, ...]]:
    chosen, lats, bws, hops = [], [], [], []
    for gpu in host.gpus:
        device = gpu.nic or _nearest_nic(host, routes, gpu.index)
        chosen.append(device)
        if device is None:
            lats.append(links.edges.nic_leaf.latency_us)
            bws.append(links.edges.nic_leaf.bandwidth_gb_per_s)
            hops.append(1)
            continue
        path = routes[gpu_node(host.name, gpu.index)][nic_node(host.name, device)]
        latency, bandwidth, n_hops = path_figures(graph, path)
        nic = host.nic(device)
        lats.append(latency + links.edges.nic_leaf.latency_us)
        bws.append(min(bandwidth, nic.gbit / 8))
        hops.append(n_hops + 1)
    return tuple(chosen), tuple(lats), tuple(bws), tuple(hops)


def _nearest_nic(host: HostSpec, routes: dict[str, dict[str, list[str]]],
                 index: int) -> str | None:
    if not host.nics:
        return None
    source = routes[gpu_node(host.name, index)]
    return min(host.nics, key=lambda nic: (len(source[nic_node(host.name, nic.device)]),
                                           nic.device)).device
