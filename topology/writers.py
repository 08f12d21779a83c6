"""Writing captures and inventories for a FabricSpec (synthetic data, round-trip tests).

The texts follow the tools' real output shapes: ``nvidia-smi topo -m`` with a NIC
Legend, ``lldpctl -f json0``, and an inventory YAML naming those files per host.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import yaml

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
