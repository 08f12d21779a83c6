"""The fabric graph: one networkx graph of the whole cluster, derived from a FabricSpec.

Node ids are ``KIND:NAME`` (``gpu:h01/gpu3``, ``nic:h01/mlx5_3``, ``pcisw:h01/sw0``,
``numa:h01/0``, ``nvswitch:h01``, ``leaf:leaf-a0``, ``agg:pod-a``, ``spine:zone-a``,
``dci``) with a ``kind`` attribute. Grouping nodes (``host:``, ``rack:``, ``zone:``)
hang off the data path through ``member`` edges, which path queries skip.

Every data-path edge carries ``kind`` (an :data:`topology.tiers.EdgeKind`),
``latency_us`` and ``bandwidth_gb_per_s`` (one direction).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import networkx as nx

from topology.spec import FabricSpec, HostSpec, nvlink_count
from topology.tiers import EdgeKind, LinkConfig

DCI_NODE = "dci"


def gpu_node(host: str, index: int) -> str:
    """Graph node of a GPU."""
    return f"gpu:{host}/gpu{index}"


def nic_node(host: str, device: str) -> str:
    """Graph node of a NIC."""
    return f"nic:{host}/{device}"


def _add_edge(graph: nx.Graph, a: str, b: str, kind: EdgeKind, links: LinkConfig,
              bandwidth: float | None = None) -> None:
    figures = links.edges.of(kind)
    graph.add_edge(a, b, kind=kind, latency_us=figures.latency_us,
                   bandwidth_gb_per_s=bandwidth or figures.bandwidth_gb_per_s)


def _member(graph: nx.Graph, group: str, node: str) -> None:
    graph.add_edge(group, node, kind="member")


def nvswitch_based(host: HostSpec) -> bool:
    """True when every GPU pair is NVLinked with one count ≥ 12 (an NVSwitch board)."""
    counts = {nvlink_count(code) for i, row in enumerate(host.gpu_links)
              for j, code in enumerate(row) if i != j}
    return len(host.gpus) > 1 and len(counts) == 1 and min(counts) >= 12


def host_pcie_graph(host: HostSpec, links: LinkConfig) -> nx.Graph:
    """The host's PCIe/CPU tree: GPUs, NICs, PCIe switches and NUMA nodes, no NVLink."""
    graph = nx.Graph()
    numas = sorted({g.numa for g in host.gpus} | {n.numa for n in host.nics} | {0})
    for numa in numas:
        graph.add_node(f"numa:{host.name}/{numa}", kind="numa")
    for i, a in enumerate(numas):
        for b in numas[i + 1:]:
            _add_edge(graph, f"numa:{host.name}/{a}", f"numa:{host.name}/{b}", "socket", links)
    for gpu in host.gpus:
        _attach_pcie(graph, host, gpu_node(host.name, gpu.index), "gpu", gpu.numa,
                     gpu.pcie_switch, links)
    for nic in host.nics:
        _attach_pcie(graph, host, nic_node(host.name, nic.device), "nic", nic.numa,
                     nic.pcie_switch, links)
    return graph


def _attach_pcie(graph: nx.Graph, host: HostSpec, node: str, kind: str, numa: int,
                 switch: str | None, links: LinkConfig) -> None:
    graph.add_node(node, kind=kind, host=host.name)
    numa_id = f"numa:{host.name}/{numa}"
    if switch is None:
        _add_edge(graph, node, numa_id, "host_bridge", links)
        return
    switch_id = f"pcisw:{host.name}/{switch}"
    if switch_id not in graph:
        graph.add_node(switch_id, kind="pcie_switch")
        _add_edge(graph, switch_id, numa_id, "host_bridge", links)
    _add_edge(graph, node, switch_id, "pcie", links)


def nvlink_edges(host: HostSpec, switch: str | None) -> Iterator[tuple[str, str, int]]:
    """NVLink edges of a host: to ``switch`` when given, else GPU to GPU."""
    if switch is not None:
        for gpu in host.gpus:
            count = max(nvlink_count(code) for code in host.gpu_links[gpu.index])
            yield gpu_node(host.name, gpu.index), switch, count
        return
    for i, row in enumerate(host.gpu_links):
        for j in range(i + 1, len(row)):
            if count := nvlink_count(row[j]):
                yield gpu_node(host.name, i), gpu_node(host.name, j), count


def build_graph(spec: FabricSpec) -> nx.Graph:
    """Build the fabric graph of a whole cluster."""
    graph = nx.Graph(name=spec.name)
    _add_switch_levels(graph, spec)
    domains = {h: d.name for d in spec.nvlink_domains for h in d.hosts}
    for domain in spec.nvlink_domains:
        graph.add_node(f"nvswitch:{domain.name}", kind="nvswitch")
    for host in spec.hosts:
        _add_host(graph, spec, host, domains.get(host.name))
    return graph


def _add_switch_levels(graph: nx.Graph, spec: FabricSpec) -> None:
    links = spec.links
    graph.add_node(DCI_NODE, kind="dci")
    for zone in spec.zones:
        graph.add_node(f"zone:{zone.name}", kind="zone")
        graph.add_node(f"spine:{zone.name}", kind="spine")
        _member(graph, f"zone:{zone.name}", f"spine:{zone.name}")
        _add_edge(graph, f"spine:{zone.name}", DCI_NODE, "zone_link", links,
                  _gb(zone.uplink_gbit))
    for pod in spec.pods:
        graph.add_node(f"agg:{pod.name}", kind="agg", zone=pod.zone)
        _add_edge(graph, f"agg:{pod.name}", f"spine:{pod.zone}", "agg_spine", links,
                  _gb(pod.uplink_gbit))
    for leaf in spec.leaves:
        graph.add_node(f"leaf:{leaf.name}", kind="leaf", pod=leaf.pod, rail=leaf.rail)
        _add_edge(graph, f"leaf:{leaf.name}", f"agg:{leaf.pod}", "leaf_agg", links,
                  _gb(leaf.uplink_gbit))
    for rack in spec.racks:
        graph.add_node(f"rack:{rack.name}", kind="rack", pod=rack.pod)


def _add_host(graph: nx.Graph, spec: FabricSpec, host: HostSpec, domain: str | None) -> None:
    links = spec.links
    graph.update(host_pcie_graph(host, links))
    graph.add_node(f"host:{host.name}", kind="host", rack=host.rack)
    _member(graph, f"rack:{host.rack}", f"host:{host.name}")
    for gpu in host.gpus:
        _member(graph, f"host:{host.name}", gpu_node(host.name, gpu.index))
    switch = _nvswitch_for(graph, host, domain)
    per_link = links.edges.nvlink.bandwidth_gb_per_s
    for a, b, count in nvlink_edges(host, switch):
        _add_edge(graph, a, b, "nvlink", links, count * per_link)
    for nic in host.nics:
        _member(graph, f"host:{host.name}", nic_node(host.name, nic.device))
        leaf = host.leaf_of(nic)
        if leaf is not None:
            _add_edge(graph, nic_node(host.name, nic.device), f"leaf:{leaf}", "nic_leaf",
                      links, nic.gbit / 8)


def _nvswitch_for(graph: nx.Graph, host: HostSpec, domain: str | None) -> str | None:
    if domain is not None:
        return f"nvswitch:{domain}"
    if not nvswitch_based(host):
        return None
    node = f"nvswitch:{host.name}"
    graph.add_node(node, kind="nvswitch")
    return node


def _gb(gbit: float | None) -> float | None:
    return gbit / 8 if gbit is not None else None


def data_path_weight(_u: str, _v: str, data: dict[str, Any]) -> float | None:
    """Edge weight for path queries: latency; ``None`` hides grouping edges."""
    if data.get("kind") == "member":
        return None
    return float(data["latency_us"]) + 1e-6  # the epsilon prefers fewer hops on ties


def path_figures(graph: nx.Graph, path: list[str]) -> tuple[float, float, int]:
    """Latency (µs), bottleneck bandwidth (GB/s) and hop count of a node path."""
    edges = [graph.edges[a, b] for a, b in pairwise(path)]
    if not edges:
        return 0.0, float("inf"), 0
    latency = sum(float(e["latency_us"]) for e in edges)
    bandwidth = min(float(e["bandwidth_gb_per_s"]) for e in edges)
    return latency, bandwidth, len(edges)


def shortest_path(graph: nx.Graph, a: str, b: str) -> list[str]:
    """Lowest-latency data path between two nodes (the plain networkx query)."""
    path: list[str] = nx.shortest_path(graph, a, b, weight=data_path_weight)
    return path


def count_by_kind(graph: nx.Graph) -> dict[str, int]:
    """How many nodes of each kind the graph has."""
    counts: dict[str, int] = {}
    for _, kind in graph.nodes(data="kind"):
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
