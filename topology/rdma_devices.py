"""A host's RDMA devices: device → network interface (the ``netdevs`` map), GUIDs, ports.

LLDP speaks of interfaces (``ens1np0``), nvidia-smi and NCCL of RDMA devices
(``mlx5_0``), InfiniBand discovery of GUIDs and node descriptions: this capture ties
them together per host. Accepted (one capture may hold several, concatenated):

* ``toposched topo collect``'s JSON, read from ``/sys/class/infiniband``
  (``{"rdma_devices": [{"device", "node_guid", "node_desc", "pci", "netdevs",
  "ports": [{"port", "netdev", "state", "link_layer", "rate_gbit", "guid"}]}]}``);
* ``rdma link show`` (iproute2): ``link mlx5_0/1 state ACTIVE physical_state LINK_UP
  netdev ens1np0``, and its JSON form ``rdma -j link show``;
* ``ibdev2netdev`` (MLNX OFED), plain or ``-v``: ``mlx5_0 port 1 ==> ens1np0 (Up)``;
* ``ibstat`` (infiniband-diags): ``CA 'mlx5_0'`` blocks with ``Node GUID``, ``Port 1:``,
  ``State``, ``Rate``, ``Port GUID`` and ``Link layer``.

Facts about one device from several of them are merged (ibstat's GUIDs with
ibdev2netdev's interfaces).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from topology.cabling import normal_guid
from topology.errors import Location, ParseError
from topology.source import bounded_int, strip_bom

RdmaVariant = Literal["json", "text"]

_RDMA_LINK = re.compile(r"(?:\d+/)?link\s+(\S+?)/(\d{1,3})\b(.*)")
_IBDEV2NETDEV = re.compile(
    r"(?:(?P<pci>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.\d)\s+)?(?P<dev>\S+)\s+"
    r"(?:\(.*?\)\s+.*?)?port\s+(?P<port>\d{1,3})(?:\s+\((?P<state>[^)]*)\))?\s*==>\s*"
    r"(?P<netdev>\S+)(?:\s+\((?P<link>[^)]*)\))?")
_IBSTAT_CA = re.compile(r"CA\s+'([^']+)'")
_IBSTAT_PORT = re.compile(r"Port\s+(\d{1,3}):")
_IBSTAT_FIELD = re.compile(r"([A-Za-z][A-Za-z ]*?):\s*(.*)")
_GUID = re.compile(r"(?:0x)?[0-9a-fA-F]{1,16}|[0-9a-fA-F]{4}(?::[0-9a-fA-F]{4}){3}")
_RATE = re.compile(r"(\d{1,4}(?:\.\d+)?)")
_EXPECTED = ("topo collect's rdma-devices JSON, `rdma link show`, `ibdev2netdev` or "
             "`ibstat` output")


class RdmaPort(BaseModel, frozen=True):
    """One port of an RDMA device."""

    port: int
    netdev: str | None = None
    state: str | None = None
    link_layer: str | None = Field(default=None, description='"InfiniBand" or "Ethernet"')
    rate_gbit: float | None = None
    guid: str | None = Field(default=None, description="port GUID, 0x + 16 hex")


class RdmaDevice(BaseModel, frozen=True):
    """One RDMA device (``mlx5_0``) of a host."""

    device: str
    node_guid: str | None = None
    node_desc: str | None = None
    pci: str | None = None
    netdevs: list[str] = Field(default_factory=list, description="interfaces of its PCI device")
    ports: list[RdmaPort] = Field(default_factory=list)

    def netdev(self) -> str | None:
        """The interface this device is reached by: its first port's, else its PCI's."""
        return next((p.netdev for p in self.ports if p.netdev), None) or \
            next(iter(self.netdevs), None)


class RdmaDevices(BaseModel, frozen=True):
    """A host's RDMA devices, sorted by name."""

    source: str
    format: RdmaVariant
    tools: list[str] = Field(default_factory=list, description="outputs recognised in it")
    devices: list[RdmaDevice]

    def netdevs(self) -> dict[str, str]:
        """RDMA device → interface, for devices with one."""
        return {d.device: netdev for d in self.devices if (netdev := d.netdev())}

    def guids(self) -> dict[str, str]:
        """Node and port GUIDs → device."""
        found: dict[str, str] = {}
        for device in self.devices:
            for guid in [device.node_guid, *(p.guid for p in device.ports)]:
                if guid:
                    found.setdefault(guid, device.device)
        return found


def looks_like_rdma_devices(text: str) -> bool:
    """Cheap sniff for any of the accepted outputs."""
    head = text[:65536]
    if '"rdma_devices"' in head or re.search(r'"ifname"\s*:\s*"[^"]+"\s*,\s*"port"', head):
        return True
    lines = [line.strip() for line in head.splitlines()[:50] if line.strip()]
    return any(_RDMA_LINK.fullmatch(line) or _IBDEV2NETDEV.fullmatch(line)
               or _IBSTAT_CA.fullmatch(line) for line in lines)


def parse_rdma_devices(text: str, source: str = "<input>") -> RdmaDevices:
    """Parse any of the accepted outputs (module docstring) into one device list."""
    body = strip_bom(text).strip()
    if body.startswith(("{", "[")):
        devices, tools = _from_json(body, source), ["json"]
        variant: RdmaVariant = "json"
    else:
        collector = _TextCollector(source)
        collector.read(body)
        devices, tools, variant = collector.devices(), sorted(collector.tools), "text"
    if not devices:
        raise ParseError("no RDMA device found", Location(source), _EXPECTED)
    return RdmaDevices(source=source, format=variant, tools=tools,
                       devices=sorted(devices, key=lambda d: _natural(d.device)))


def _natural(name: str) -> tuple[str, int, str]:
    stem = name.rstrip("0123456789")
    digits = name[len(stem):].lstrip("0") or "0"
    return stem, len(digits), digits


# -- JSON ---------------------------------------------------------------------------------


def _from_json(text: str, source: str) -> list[RdmaDevice]:
    try:
        doc = json.loads(text, parse_int=bounded_int)
    except (ValueError, RecursionError) as exc:
        line = getattr(exc, "lineno", None)
        raise ParseError(f"invalid JSON: {getattr(exc, 'msg', exc)}", Location(source, line),
                         _EXPECTED) from exc
    if isinstance(doc, dict) and isinstance(doc.get("rdma_devices"), list):
        return [_json_device(item, f"rdma_devices[{i}]", source)
                for i, item in enumerate(doc["rdma_devices"])]
    if isinstance(doc, list):
        return _rdma_link_json(doc, source)
    raise ParseError("neither a rdma_devices document nor `rdma -j link` output",
                     Location(source, path="$"), _EXPECTED)


def _json_device(item: Any, path: str, source: str) -> RdmaDevice:
    if not isinstance(item, dict) or not isinstance(item.get("device"), str) \
            or not item["device"].strip():
        raise ParseError("an entry without a device name", Location(source, path=path),
                         'objects with "device": "mlx5_0"')
    ports = item.get("ports") or []
    if not isinstance(ports, list):
        raise ParseError("ports is not a list", Location(source, path=f"{path}.ports"),
                         "a list of ports")
    return RdmaDevice(
        device=item["device"].strip(),
        node_guid=_guid(item.get("node_guid"), f"{path}.node_guid", source),
        node_desc=_text(item.get("node_desc")), pci=_text(item.get("pci")),
        netdevs=[n for n in item.get("netdevs") or [] if isinstance(n, str) and n],
        ports=[_json_port(p, f"{path}.ports[{i}]", source) for i, p in enumerate(ports)])


def _json_port(item: Any, path: str, source: str) -> RdmaPort:
    if not isinstance(item, dict) or not isinstance(item.get("port"), int) \
            or isinstance(item.get("port"), bool):
        raise ParseError("a port without a number", Location(source, path=path),
                         'objects with "port": 1')
    rate = item.get("rate_gbit")
    return RdmaPort(port=item["port"], netdev=_text(item.get("netdev")),
                    state=_text(item.get("state")), link_layer=_text(item.get("link_layer")),
                    rate_gbit=float(rate) if isinstance(rate, int | float)
                    and not isinstance(rate, bool) else None,
                    guid=_guid(item.get("guid"), f"{path}.guid", source))


def _rdma_link_json(doc: list[Any], source: str) -> list[RdmaDevice]:
    """``rdma -j link show``: ``[{"ifname": "mlx5_0", "port": 1, "netdev": …}]``."""
    merged = _Merged()
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("ifname"), str):
            raise ParseError("an entry without ifname", Location(source, path=f"$[{i}]"),
                             "`rdma -j link show` objects")
        port = item.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            raise ParseError("an entry without a port number",
                             Location(source, path=f"$[{i}].port"), "an integer port")
        merged.port(item["ifname"], port, netdev=_text(item.get("netdev")),
                    state=_text(item.get("state")))
    return merged.devices()


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _guid(value: Any, path: str, source: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _GUID.fullmatch(value.strip()):
        raise ParseError(f"not a GUID: {str(value)[:40]!r}", Location(source, path=path),
                         "a GUID like 0x1c34da0300a1b2c3 or 1c34:da03:00a1:b2c3")
    return normal_guid(value)


# -- text ---------------------------------------------------------------------------------


@dataclass
class _Merged:
    """Device facts gathered from several outputs, merged by device and port."""

    by_device: dict[str, dict[str, Any]] = field(default_factory=dict)

    def device(self, name: str, **facts: Any) -> None:
        held = self.by_device.setdefault(name, {"ports": {}})
        for key, value in facts.items():
            if value is not None:
                held.setdefault(key, value)

    def port(self, device: str, port: int, **facts: Any) -> None:
        self.device(device)
        held = self.by_device[device]["ports"].setdefault(port, {})
        for key, value in facts.items():
            if value is not None:
                held.setdefault(key, value)

    def devices(self) -> list[RdmaDevice]:
        found = []
        for name, facts in self.by_device.items():
            ports = [RdmaPort(port=number, **values)
                     for number, values in sorted(facts.pop("ports").items())]
            found.append(RdmaDevice(device=name, ports=ports, **facts))
        return found


class _TextCollector:
    """Reads rdma link, ibdev2netdev and ibstat lines, in any mix."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.merged = _Merged()
        self.tools: set[str] = set()
        self.ca: str | None = None
        self.port_number: int | None = None

    def devices(self) -> list[RdmaDevice]:
        return self.merged.devices()

    def read(self, text: str) -> None:
        for number, line in _numbered(text):
            if self._rdma_link(line) or self._ibdev2netdev(line) or self._ibstat(line, number):
                continue

    def _rdma_link(self, line: str) -> bool:
        found = _RDMA_LINK.fullmatch(line)
        if found is None:
            return False
        words = found.group(3).split()
        facts = dict(zip(words[::2], words[1::2], strict=False))
        self.merged.port(found.group(1), int(found.group(2)), netdev=facts.get("netdev"),
                         state=facts.get("state"))
        self.tools.add("rdma-link")
        self.ca = None
        return True

    def _ibdev2netdev(self, line: str) -> bool:
        found = _IBDEV2NETDEV.fullmatch(line)
        if found is None:
            return False
        state = (found.group("state") or "").strip() or None
        self.merged.device(found.group("dev"), pci=found.group("pci"))
        self.merged.port(found.group("dev"), int(found.group("port")),
                         netdev=found.group("netdev"), state=state)
        self.tools.add("ibdev2netdev")
        self.ca = None
        return True

    def _ibstat(self, line: str, number: int) -> bool:
        ca = _IBSTAT_CA.fullmatch(line)
        if ca is not None:
            self.ca, self.port_number = ca.group(1), None
            self.merged.device(self.ca)
            self.tools.add("ibstat")
            return True
        if self.ca is None:
            return False
        port = _IBSTAT_PORT.fullmatch(line)
        if port is not None:
            self.port_number = int(port.group(1))
            return True
        field_ = _IBSTAT_FIELD.fullmatch(line)
        if field_ is not None:
            self._ibstat_field(field_.group(1).strip().lower(), field_.group(2).strip(), number)
        return True

    def _ibstat_field(self, key: str, value: str, number: int) -> None:
        assert self.ca is not None
        where = Location(self.source, number)
        if key == "node guid":
            self.merged.device(self.ca, node_guid=_text_guid(value, where))
        elif self.port_number is not None and key in ("port guid", "state", "rate",
                                                      "link layer"):
            name = {"port guid": "guid", "state": "state", "link layer": "link_layer",
                    "rate": "rate_gbit"}[key]
            parsed: Any = _text_guid(value, where) if key == "port guid" else \
                _rate(value) if key == "rate" else value or None
            self.merged.port(self.ca, self.port_number, **{name: parsed})


def _numbered(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith(("#", "$")):
            yield number, line


def _text_guid(value: str, where: Location) -> str:
    if not _GUID.fullmatch(value):
        raise ParseError(f"not a GUID: {value[:40]!r}", where, "a GUID like 0x1c34da0300a1b2c3")
    return normal_guid(value)


def _rate(value: str) -> float | None:
    found = _RATE.match(value)
    return float(found.group(1)) if found else None
