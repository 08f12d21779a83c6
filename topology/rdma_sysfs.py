"""Reading a host's RDMA devices from sysfs (``/sys/class/infiniband``), for
``toposched topo collect``: no tool needed, and the result is what
:func:`topology.rdma_devices.parse_rdma_devices` reads back.

Per device: ``node_guid``, ``node_desc``, the PCI address (where ``device`` points),
the interfaces of that PCI device (``device/net/*``), and per port ``state``,
``link_layer``, ``rate``, the port GUID (the low half of GID 0 on InfiniBand) and the
interface of GID 0 (``gid_attrs/ndevs/0``, set on RoCE ports).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SYSFS_ROOT = Path("/sys/class/infiniband")
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*Gb/sec")
_GUID = re.compile(r"[0-9a-fA-F]{16}")


def collect_rdma_devices(root: Path = SYSFS_ROOT) -> dict[str, Any]:
    """The ``rdma_devices`` document of this host (empty list when there is no RDMA)."""
    devices = [_device(path) for path in sorted(root.iterdir())] if root.is_dir() else []
    return {"rdma_devices": devices, "collected_from": str(root)}


def rdma_devices_text(root: Path = SYSFS_ROOT) -> str | None:
    """The document as JSON text, or None when the host has no RDMA device."""
    document = collect_rdma_devices(root)
    return json.dumps(document, indent=1) + "\n" if document["rdma_devices"] else None


def _device(path: Path) -> dict[str, Any]:
    device = path / "device"
    pci = device.resolve().name if device.exists() else None
    ports = sorted((p for p in (path / "ports").glob("*") if p.name.isdigit()),
                   key=lambda p: int(p.name))
    return {"device": path.name, "node_guid": _read(path / "node_guid"),
            "node_desc": _read(path / "node_desc"), "pci": pci,
            "netdevs": sorted(p.name for p in (device / "net").glob("*")),
            "ports": [_port(port) for port in ports]}


def _port(path: Path) -> dict[str, Any]:
    state = _read(path / "state")
    rate = _RATE.search(_read(path / "rate") or "")
    layer = _read(path / "link_layer")
    gid = _read(path / "gids" / "0") or ""
    guid = gid.replace(":", "")[-16:] if layer == "InfiniBand" else ""
    return {"port": int(path.name), "state": state.split(":", 1)[-1].strip() if state else None,
            "link_layer": layer, "rate_gbit": float(rate.group(1)) if rate else None,
            "guid": f"0x{guid}" if _GUID.fullmatch(guid) and guid.strip("0") else None,
            "netdev": _read(path / "gid_attrs" / "ndevs" / "0")}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None
