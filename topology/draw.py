"""Drawing a fabric: Graphviz DOT text, and a self-contained SVG (no Graphviz needed).

The SVG shows the switch hierarchy (zones → pods → leaves) with hosts under the
leaves their NICs land on; large clusters are summarised (first hosts per leaf,
then a count) so the picture stays readable.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape

from topology.spec import FabricSpec, HostSpec

_MAX_HOSTS_PER_LEAF = 4


def to_dot(spec: FabricSpec) -> str:
    """Graphviz DOT of the switch hierarchy and host attachments."""
    lines = [f'graph "{spec.name}" {{', "  rankdir=TB; node [shape=box, fontsize=10];"]
    for zone in spec.zones:
        lines.append(f'  "spine:{zone.name}" [label="{zone.name}\\nspine", shape=ellipse];')
        lines.append(f'  "dci" -- "spine:{zone.name}";')
    for pod in spec.pods:
        lines.append(f'  "agg:{pod.name}" [label="{pod.name}\\naggregation"];')
        lines.append(f'  "spine:{pod.zone}" -- "agg:{pod.name}";')
    for leaf in spec.leaves:
        rail = f"\\nrail {leaf.rail}" if leaf.rail is not None else ""
        lines.append(f'  "leaf:{leaf.name}" [label="{leaf.name}{rail}"];')
        lines.append(f'  "agg:{leaf.pod}" -- "leaf:{leaf.name}";')
    for host in spec.hosts:
        lines.append(f'  "host:{host.name}" [label="{host.name}\\n{len(host.gpus)}x '
                     f'{host.gpu_type}", shape=component];')
        for leaf_name in _host_leaves(host):
            lines.append(f'  "leaf:{leaf_name}" -- "host:{host.name}";')
    for domain in spec.nvlink_domains:
        members = " ".join(f'"host:{h}"' for h in domain.hosts)
        lines.append(f'  subgraph "cluster_{domain.name}" {{ label="{domain.name}"; {members} }}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(spec: FabricSpec) -> str:
    """A layered SVG drawing: spine per zone, pods, leaves, then hosts per leaf."""
    hosts_by_leaf: dict[str, list[str]] = defaultdict(list)
    for host in spec.hosts:
        for leaf_name in _host_leaves(host):
            hosts_by_leaf[leaf_name].append(host.name)
    width = max(len(spec.leaves), 1) * 150 + 40
    items: list[str] = []
    leaf_x = {leaf.name: 20 + i * 150 for i, leaf in enumerate(spec.leaves)}
    pod_x = {p.name: _mean([leaf_x[f.name] for f in spec.leaves if f.pod == p.name], width)
             for p in spec.pods}
    zone_x = {z.name: _mean([pod_x[p.name] for p in spec.pods if p.zone == z.name], width)
              for z in spec.zones}
    for zone, x in zone_x.items():
        items.append(_box(x, 20, f"spine {zone}", "#d0e0ff"))
    for pod in spec.pods:
        items.append(_line(zone_x[pod.zone], 50, pod_x[pod.name], 100))
        items.append(_box(pod_x[pod.name], 100, pod.name, "#e0ecff"))
    for leaf in spec.leaves:
        items.append(_line(pod_x[leaf.pod], 130, leaf_x[leaf.name], 180))
        label = leaf.name + (f" (rail {leaf.rail})" if leaf.rail is not None else "")
        items.append(_box(leaf_x[leaf.name], 180, label, "#eef5ff"))
        items += _host_column(leaf_x[leaf.name], hosts_by_leaf.get(leaf.name, []))
    height = 260 + 30 * (_MAX_HOSTS_PER_LEAF + 1)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="10">\n<text x="20" y="12">'
            f'{escape(spec.name)}: {len(spec.hosts)} hosts, {len(spec.gpu_names())} GPUs</text>\n'
            + "\n".join(items) + "\n</svg>\n")


def _host_column(x: float, hosts: list[str]) -> list[str]:
    items = []
    for i, name in enumerate(hosts[:_MAX_HOSTS_PER_LEAF]):
        items.append(_box(x, 240 + i * 30, name, "#f4f4f4"))
    if len(hosts) > _MAX_HOSTS_PER_LEAF:
        more = len(hosts) - _MAX_HOSTS_PER_LEAF
        items.append(f'<text x="{x + 4}" y="{255 + _MAX_HOSTS_PER_LEAF * 30}">'
                     f'+{more} more hosts</text>')
    return items


def _mean(values: list[float], width: float) -> float:
    return sum(values) / len(values) if values else width / 2


def _box(x: float, y: float, label: str, fill: str) -> str:
    return (f'<rect x="{x}" y="{y}" width="140" height="28" rx="4" fill="{fill}" '
            f'stroke="#456"/><text x="{x + 4}" y="{y + 18}">{escape(label[:26])}</text>')


def _line(x1: float, y1: float, x2: float, y2: float) -> str:
    return (f'<line x1="{x1 + 70}" y1="{y1 + 8}" x2="{x2 + 70}" y2="{y2}" '
            'stroke="#789"/>')


def _host_leaves(host: HostSpec) -> list[str]:
    """The leaves a host's NICs (or the host itself) land on, sorted."""
    leaves = {host.leaf_of(nic) for nic in host.nics} | {host.uplink_leaf}
    return sorted(leaf for leaf in leaves if leaf)
