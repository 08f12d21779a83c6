"""Writing captures and inventories for a FabricSpec (synthetic data, round-trip tests).

The texts follow the tools' real output shapes: ``nvidia-smi topo -m`` with a NIC
Legend, ``lldpctl -f json0``, and an inventory YAML naming those files per host.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import yaml

from topology.iblinkinfo import RATE_GENERATION
from topology.ibnetdiscover import IbFabric, IbLink
from topology.spec import FabricSpec, HostSpec, NicSpec
from topology.templates import pcie_code

_LEGEND = """
Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks
"""


def nvsmi_text(host: HostSpec) -> str:
    """``nvidia-smi topo -m`` output for a host (tab separated, NIC Legend included)."""
    nic_cols = [f"NIC{i}" for i in range(len(host.nics))]
    header = ["", *[f"GPU{g.index}" for g in host.gpus], *nic_cols,
              "CPU Affinity", "NUMA Affinity", "GPU NUMA ID"]
    lines = ["\t".join(header)]
    for gpu in host.gpus:
        cells = list(host.gpu_links[gpu.index]) + [pcie_code(gpu, n) for n in host.nics]
        cpus = f"{gpu.numa * 48}-{gpu.numa * 48 + 47}"
        lines.append("\t".join([f"GPU{gpu.index}", *cells, cpus, str(gpu.numa), "N/A"]))
    for i, nic in enumerate(host.nics):
        cells = [pcie_code(nic, g) for g in host.gpus]
        cells += ["X" if j == i else pcie_code(nic, other) for j, other in enumerate(host.nics)]
        lines.append("\t".join([f"NIC{i}", *cells]))
    legend = "\n".join(f"  NIC{i}: {nic.device}" for i, nic in enumerate(host.nics))
    return "\n".join(lines) + "\n" + _LEGEND + ("\nNIC Legend:\n\n" + legend + "\n"
                                                if host.nics else "")


def netdev_of(nic: NicSpec, index: int) -> str:
    """A realistic interface name for a NIC (predictable naming, as on ConnectX hosts)."""
    return nic.netdev or f"ens{index + 1}np0"


def lldp_json0(host: HostSpec) -> str:
    """``lldpctl -f json0`` output: one neighbour (the NIC's leaf) per attached NIC."""
    interfaces = [_json0_interface(netdev_of(nic, i), nic, i)
                  for i, nic in enumerate(host.nics) if nic.leaf]
    return json.dumps({"lldp": [{"interface": interfaces}]}, indent=2)


def _json0_interface(netdev: str, nic: NicSpec, index: int) -> dict[str, Any]:
    leaf = nic.leaf or "?"
    digest = zlib.crc32(leaf.encode())
    mac = f"b8:ce:f6:{digest & 0xFF:02x}:{(digest >> 8) & 0xFF:02x}:{index:02x}"
    return {
        "name": netdev, "via": "LLDP", "rid": str(index + 1), "age": "0 day, 01:02:03",
        "chassis": [{"id": [{"type": "mac", "value": mac}], "name": [{"value": leaf}],
                     "descr": [{"value": "SONiC Software Version: SONiC.202305"}],
                     "mgmt-ip": [{"value": f"10.255.{index}.1"}],
                     "capability": [{"type": "Bridge", "enabled": True},
                                    {"type": "Router", "enabled": True}]}],
        "port": [{"id": [{"type": "ifname", "value": nic.port or f"Ethernet{index * 8}"}],
                  "descr": [{"value": f"{netdev} uplink"}], "ttl": [{"value": "120"}]}],
        "vlan": [{"vlan-id": "100", "pvid": True, "value": "vlan100"}],
    }


def write_captures(spec: FabricSpec, directory: str | Path) -> Path:
    """Write an inventory plus per-host nvidia-smi and LLDP captures; return the inventory."""
    out = Path(directory)
    (out / "captures").mkdir(parents=True, exist_ok=True)
    for host in spec.hosts:
        (out / "captures" / f"{host.name}.nvsmi.txt").write_text(nvsmi_text(host))
        (out / "captures" / f"{host.name}.lldp.json").write_text(lldp_json0(host))
    inventory = out / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(inventory_document(spec), sort_keys=False))
    return inventory


def inventory_document(spec: FabricSpec) -> dict[str, Any]:
    """An inventory whose racks name no leaves: LLDP captures must place every NIC."""
    zones = []
    for zone in spec.zones:
        pods = []
        for pod in (p for p in spec.pods if p.zone == zone.name):
            leaves = [{"name": f.name, **({"uplink_gbit": f.uplink_gbit} if f.uplink_gbit else {})}
                      for f in spec.leaves if f.pod == pod.name]
            racks = [{"name": r.name, "hosts": [_host_entry(h) for h in spec.hosts
                                                if h.rack == r.name]}
                     for r in spec.racks if r.pod == pod.name]
            pods.append({"name": pod.name, "uplink_gbit": pod.uplink_gbit, "leaves": leaves,
                         "racks": racks})
        zones.append({"name": zone.name, "region": zone.region, "uplink_gbit": zone.uplink_gbit,
                      "pods": pods})
    return {"version": 1, "name": spec.name, "zones": zones, "nvlink_domains": [
        {"name": d.name, "hosts": list(d.hosts), "nvlinks_per_gpu": d.nvlinks_per_gpu}
        for d in spec.nvlink_domains]}


def _host_entry(host: HostSpec) -> dict[str, Any]:
    return {"name": host.name, "gpu_type": host.gpu_type,
            "nic_gbit": host.nics[0].gbit if host.nics else None,
            "nvsmi": f"captures/{host.name}.nvsmi.txt",
            "lldp": f"captures/{host.name}.lldp.json",
            "netdevs": {nic.device: netdev_of(nic, i) for i, nic in enumerate(host.nics)}}


# -- cluster captures (synthetic data: round-trip tests and benchmarks) ----------------------

def _guid(name: str) -> str:
    """A stable 64-bit GUID (16 hex digits) for a synthetic device name."""
    return hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def ibnetdiscover_text(spec: FabricSpec, spines_per_pod: int = 2, cores: int = 2) -> str:
    """``ibnetdiscover`` (plain form) of the fabric as a three-level InfiniBand fat tree:
    every leaf cabled to each of its pod's spines, every spine to each core; each host
    NIC an HCA described ``<host> <device>``."""
    cabling = _IbCabling()
    for host in spec.hosts:
        for nic in host.nics:
            switch = host.leaf_of(nic)
            if switch is not None:
                cabling.hca(host.name, nic.device, switch)
    spines = {pod.name: [f"{pod.name}-spine{k}" for k in range(spines_per_pod)]
              for pod in spec.pods}
    for leaf in spec.leaves:
        for spine in spines[leaf.pod]:
            cabling.cable(leaf.name, spine)
    for spine in (s for pod_spines in spines.values() for s in pod_spines):
        for k in range(cores):
            cabling.cable(spine, f"core{k}")
    return cabling.text()


class _IbCabling:
    """Switch ports as they get cabled; prints the subnet as ibnetdiscover would."""

    def __init__(self) -> None:
        self.ports: dict[str, list[tuple[int, str, int]]] = {}  # switch → (port, peer, port)
        self.cas: dict[tuple[str, str], tuple[str, int]] = {}   # (host, device) → switch port

    def _next(self, switch: str) -> int:
        return len(self.ports.setdefault(switch, [])) + 1

    def hca(self, host: str, device: str, switch: str) -> None:
        port = self._next(switch)
        self.ports[switch].append((port, f"ca:{host}/{device}", 1))
        self.cas[(host, device)] = (switch, port)

    def cable(self, a: str, b: str) -> None:
        pa, pb = self._next(a), self._next(b)
        self.ports[a].append((pa, b, pb))
        self.ports[b].append((pb, a, pa))

    def text(self) -> str:
        lids = {name: i + 1 for i, name in enumerate(self.ports)}
        lines = ["#", "# Topology file: written by toposched (synthetic)", "#"]
        for name, ports in self.ports.items():
            lines += _ib_switch(name, ports, lids)
        for (host, device), (switch, port) in self.cas.items():
            guid = _guid(f"{host}/{device}")
            lines += ["", "vendid=0x2c9", "devid=0x1021", f"caguid=0x{guid}",
                      f'Ca\t1 "H-{guid}"\t\t# "{host} {device}"',
                      f'[1]({guid}) \t"S-{_guid(switch)}"[{port}]\t\t# lid {len(lids) + 1} '
                      f'lmc 0 "MF0;{switch}:MQM9700/U1" lid {lids[switch]} 4xNDR']
        return "\n".join(lines) + "\n"


def _ib_switch(name: str, ports: list[tuple[int, str, int]], lids: dict[str, int]) -> list[str]:
    guid = _guid(name)
    lines = ["", "vendid=0x2c9", "devid=0xd2f2", f"switchguid=0x{guid}({guid})",
             f'Switch\t{len(ports)} "S-{guid}"\t\t# "MF0;{name}:MQM9700/U1" enhanced port 0 '
             f"lid {lids[name]} lmc 0"]
    for port, peer, peer_port in ports:
        if peer.startswith("ca:"):
            host, device = peer[3:].split("/", 1)
            ca = _guid(f"{host}/{device}")
            lines.append(f'[{port}]\t"H-{ca}"[1]({ca}) \t\t# "{host} {device}" lid 0 4xNDR')
        else:
            lines.append(f'[{port}]\t"S-{_guid(peer)}"[{peer_port}]\t\t# '
                         f'"MF0;{peer}:MQM9700/U1" lid {lids[peer]} 4xNDR')
    return lines


def iblinkinfo_text(fabric: IbFabric, line: bool = False) -> str:
    """``iblinkinfo`` (classic, or ``-l`` with ``line``) of a parsed subnet, as the tool
    lays it out: every node's cabled ports with their far ends, switches first. Nodes
    without a LID get one above the highest known; a CA's port GUID is its node GUID."""
    ports: dict[str, list[tuple[int, IbLink, str, int]]] = {}
    for link in fabric.links:
        ports.setdefault(link.a, []).append((link.a_port, link, link.b, link.b_port))
        ports.setdefault(link.b, []).append((link.b_port, link, link.a, link.a_port))
    nodes = fabric.by_guid()
    spare = iter(range(max((n.lid or 0 for n in fabric.nodes), default=0) + 1, 1 << 30))
    lids = {n.guid: n.lid if n.lid is not None else next(spare) for n in fabric.nodes}
    lines: list[str] = []
    for node in sorted(fabric.nodes, key=lambda n: n.kind != "switch"):
        if node.guid not in ports:
            continue
        if not line:
            lines.append(f"Switch: {node.guid} {node.description}:" if node.kind == "switch"
                         else f"{_LINKINFO_KIND[node.kind]}: {node.description}:")
        for port, link, far, far_port in sorted(ports[node.guid], key=lambda p: p[0]):
            near = (f'{node.guid} "{node.description:>30}" {lids[node.guid]:>6}' if line
                    else f"      {lids[node.guid]:>6}" if node.kind == "switch"
                    else f"      {node.guid} {lids[node.guid]:>6}")
            far_id = f"{far} " if line else ""
            lines.append(f"{near} {port:>4}[  ] =={_link_state(link)}==>  {far_id}"
                         f'{lids[far]:>6} {far_port:>4}[  ] "{nodes[far].description}" ( )')
    return "\n".join(lines) + "\n"


_LINKINFO_KIND = {"switch": "Switch", "ca": "CA", "router": "Router"}


def _link_state(link: IbLink) -> str:
    rate = {gen: rate for rate, gen in RATE_GENERATION.items()}.get(link.speed or "")
    if link.width is None or rate is None:
        return "(                Active/  LinkUp)"
    return f"({link.width.upper():>3} {rate + ' Gbps':>18} Active/  LinkUp)"


def rdma_devices_text(host: HostSpec) -> str:
    """``ibdev2netdev`` output for a host: each RDMA device and its interface."""
    return "".join(f"{nic.device} port 1 ==> {netdev_of(nic, i)} (Up)\n"
                   for i, nic in enumerate(host.nics))


def k8s_nodes_json(spec: FabricSpec) -> str:
    """``kubectl get nodes -o json`` with the AWS labels of the fabric's places: layer 1
    the zone's spine, layer 2 the pod, layer 3 the host's first leaf."""
    pod_zone = {pod.name: pod.zone for pod in spec.pods}
    leaf_pod = {leaf.name: leaf.pod for leaf in spec.leaves}
    rack_pod = {rack.name: rack.pod for rack in spec.racks}
    regions = {zone.name: zone.region for zone in spec.zones}
    items = []
    for host in spec.hosts:
        leaf = host.leaf_of(host.nics[0] if host.nics else None)
        pod = leaf_pod.get(leaf or "", rack_pod[host.rack])
        zone = pod_zone[pod]
        labels = {"kubernetes.io/hostname": host.name, "topology.kubernetes.io/zone": zone,
                  "topology.k8s.aws/network-node-layer-1": f"nn-{_guid(zone)}",
                  "topology.k8s.aws/network-node-layer-2": f"nn-{_guid(pod)}",
                  "topology.k8s.aws/network-node-layer-3": f"nn-{_guid(leaf or host.name)}"}
        if regions.get(zone):
            labels["topology.kubernetes.io/region"] = regions[zone] or ""
        items.append({"kind": "Node", "metadata": {"name": host.name, "labels": labels},
                      "spec": {"providerID": f"aws:///{zone}/i-{_guid(host.name)}"},
                      "status": {"capacity": {"nvidia.com/gpu": str(len(host.gpus))}}})
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def aws_topology_json(spec: FabricSpec) -> str:
    """``describe-instance-topology`` output for the fabric, instances named after the
    k8s nodes of :func:`k8s_nodes_json` (``i-<guid of the host>``)."""
    nodes = json.loads(k8s_nodes_json(spec))["items"]
    instances = [{"InstanceId": node["spec"]["providerID"].rsplit("/", 1)[-1],
                  "InstanceType": "p5.48xlarge",
                  "NetworkNodes": [node["metadata"]["labels"][
                      f"topology.k8s.aws/network-node-layer-{k}"] for k in (1, 2, 3)],
                  "AvailabilityZone": node["metadata"]["labels"]["topology.kubernetes.io/zone"]}
                 for node in nodes]
    return json.dumps({"Instances": instances, "NextToken": None}, indent=1)
