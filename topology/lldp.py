"""Parser for lldpd neighbour captures (``lldpcli -f json0|json|keyvalue show neighbors``).

lldpd builds one tree per neighbour and prints it three ways:

* ``json0``: every child element is a list, names stay in ``"name"`` fields and
  element data in ``"value"``;
* ``json``: the json0 tree "cleaned up": one-element lists collapse to their
  element, objects holding only ``value`` collapse to the string, and an object
  with a string ``name`` is re-keyed by it (``{"eth0": {…}}``, ``{"leaf-01": {…}}``),
  so the shape of a field depends on how many values it has;
* ``keyvalue``: ``lldp.<iface>.<path>=<value>`` lines, repeated for lists, where a
  ``type`` attribute replaces the last path component (``chassis.mac=…``,
  ``port.ifname=…``).

All three become the same :class:`LldpCapture`, one :class:`LldpNeighbor` per
(local interface, neighbour chassis).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from topology.errors import Location, ParseError, WrongFormatError

LldpFormat = Literal["json0", "json", "keyvalue"]

#: Element names lldpd prints directly under an interface; used to find where an
#: interface name with dots (``bond0.100``) ends in a keyvalue key.
_INTERFACE_KEYS = frozenset({
    "via", "rid", "age", "chassis", "port", "vlan", "ppvid", "pi", "lldp-med",
    "unknown-tlvs", "ttl", "status", "tx", "rx",
})
#: Keys that only ``show interfaces`` / ``show statistics`` print under an interface.
_NOT_NEIGHBOUR_KEYS = frozenset({"status", "tx", "rx"})
#: Keys printed once at the start of each neighbour: a repeat starts the next one.
_NEIGHBOUR_START = frozenset({"via", "rid", "age"})
#: lldpd's chassis/port id subtype names (its ``*_id_subtype_map``).
_ID_TYPES = frozenset({"mac", "local", "ip", "ifname", "ifalias", "unhandled"})
#: Free-text fields whose embedded newlines keyvalue prints verbatim.
_MULTILINE_KEYS = ("descr",)
_SMALL_INT = re.compile(r"\s*\d{1,9}\s*")
_VLAN_NAME = re.compile(r"(?:vlan)?[\s_-]*(\d{1,4})", re.IGNORECASE)
_JSON_HEAD = re.compile(r'\{\s*"lldp"\s*:')
_KV_EXPECTED = "lldp.<interface>.<key>=<value>"


class LldpNeighbor(BaseModel, frozen=True):
    """One LLDP neighbour seen on one local interface."""

    interface: str = Field(description='local interface, e.g. "enp26s0np0"')
    chassis_id: str | None = None
    chassis_id_type: str | None = Field(default=None, description='"mac", "local", …')
    chassis_name: str | None = Field(default=None, description="neighbour system name")
    port_id: str | None = None
    port_id_type: str | None = None
    port_descr: str | None = None
    vlans: list[int] = Field(default_factory=list, description="VLAN ids, sorted, unique")
    mgmt_ip: str | None = Field(default=None, description="first management address")
    mgmt_ips: list[str] = Field(default_factory=list)
    ttl: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        """Keep ``vlans`` sorted and unique and ``mgmt_ip`` equal to the first address."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("vlans"), list | tuple):
            data["vlans"] = sorted(set(data["vlans"]))
        if isinstance(data.get("mgmt_ips"), list | tuple):
            data["mgmt_ips"] = list(dict.fromkeys(data["mgmt_ips"]))
            if data.get("mgmt_ip") is None and data["mgmt_ips"]:
                data["mgmt_ip"] = data["mgmt_ips"][0]
        return data


class LldpCapture(BaseModel, frozen=True):
    """The neighbours of one host, sorted by local interface."""

    source: str
    format: LldpFormat
    neighbors: list[LldpNeighbor]

    def by_interface(self) -> dict[str, list[LldpNeighbor]]:
        """Neighbours grouped by local interface, interfaces in sorted order."""
        grouped: dict[str, list[LldpNeighbor]] = {}
        for neighbor in self.neighbors:
            grouped.setdefault(neighbor.interface, []).append(neighbor)
        return grouped


def looks_like_lldp(text: str) -> bool:
    """Cheap sniff: does ``text`` start like lldpd json/json0/keyvalue output?"""
    head = text[:4096].lstrip("\ufeff \t\r\n")
    if head.startswith("lldp."):
        return "=" in head.split("\n", 1)[0]
    return _JSON_HEAD.match(head) is not None


def parse_lldp(text: str, source: str = "<input>") -> LldpCapture:
    """Parse lldpd neighbour output in json0, json or keyvalue form (detected here).

    Empty keyvalue output (lldpd prints nothing without neighbours) and JSON without
    interfaces are valid captures with no neighbours.
    """
    body = text.lstrip("\ufeff")
    if body.lstrip().startswith(("{", "[")):
        fmt, drafts = _parse_json(body, source)
    else:
        fmt, drafts = "keyvalue", _parse_keyvalue(body, source)
    return LldpCapture(source=source, format=fmt, neighbors=_merge(drafts))


# -- the common draft: one neighbour before merging and freezing --


@dataclass
class _Draft:
    interface: str
    chassis_id: str | None = None
    chassis_id_type: str | None = None
    chassis_name: str | None = None
    port_id: str | None = None
    port_id_type: str | None = None
    port_descr: str | None = None
    vlans: list[int] = field(default_factory=list)
    mgmt_ips: list[str] = field(default_factory=list)
    ttl: int | None = None

    def identity(self) -> tuple[str, str, str] | None:
        """(interface, chassis) that makes two entries the same neighbour."""
        if self.chassis_id:
            return self.interface, self.chassis_id_type or "", self.chassis_id
        if self.chassis_name:
            return self.interface, "name", self.chassis_name
        return None

    def absorb(self, other: _Draft) -> None:
        """Fill this draft's gaps from another sighting of the same neighbour."""
        for name in ("chassis_name", "port_id", "port_id_type", "port_descr", "ttl"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(other, name))
        self.vlans += other.vlans
        self.mgmt_ips += other.mgmt_ips

    def freeze(self) -> LldpNeighbor:
        return LldpNeighbor(**self.__dict__)


def _merge(drafts: Iterable[_Draft]) -> list[LldpNeighbor]:
    """One neighbour per (interface, chassis), sorted by interface (stable)."""
    seen: dict[tuple[str, str, str], _Draft] = {}
    kept: list[_Draft] = []
    for draft in drafts:
        key = draft.identity()
        if key is not None and key in seen:
            seen[key].absorb(draft)
            continue
        if key is not None:
            seen[key] = draft
        kept.append(draft)
    kept.sort(key=lambda draft: draft.interface)
    return [draft.freeze() for draft in kept]


def _clean(value: str | None) -> str | None:
    """Strip a text value; an empty one means the neighbour did not send it."""
    if value is None:
        return None
    return value.strip() or None


def _integer(raw: str, what: str, where: Location, upper: int) -> int:
    """A small non-negative integer from lldpd's string, or a ParseError naming it."""
    if not _SMALL_INT.fullmatch(raw) or int(raw) > upper:
        raise ParseError(f"{what} {raw[:40]!r} is not an integer from 0 to {upper}", where,
                         f"a {what}")
    return int(raw)


def _vlan_id(raw: str, where: Location) -> int:
    return _integer(raw, "VLAN id", where, 4095)


def _ttl(raw: str | None, where: Location) -> int | None:
    return None if raw is None else _integer(raw, "TTL", where, 65535)


# -- JSON (json0 and json) --


def _parse_json(text: str, source: str) -> tuple[LldpFormat, list[_Draft]]:
    root = _lldp_root(_load_json(text, source), source)
    if isinstance(root, list):
        return "json0", [_json_draft(*entry, source) for entry in _json0_entries(root, source)]
    return "json", [_json_draft(*entry, source) for entry in _json_entries(root, source)]


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg} (column {exc.colno})",
                         Location(source, exc.lineno), "lldpd JSON output") from exc
    except (RecursionError, ValueError) as exc:
        raise ParseError(f"invalid JSON: {exc}", Location(source), "lldpd JSON output") from exc


def _lldp_root(doc: Any, source: str) -> list[Any] | dict[str, Any]:
    if isinstance(doc, dict) and "local-chassis" in doc:
        raise WrongFormatError("lldpcli show chassis output", "lldpcli show neighbors output",
                               Location(source, path="local-chassis"))
    if not isinstance(doc, dict) or "lldp" not in doc:
        raise ParseError(f"not an lldpd neighbours document (found {_kind(doc)})",
                         Location(source, path="$"), '{"lldp": …}')
    root = doc["lldp"]
    if not isinstance(root, list | dict):
        raise ParseError(f"found {_kind(root)}", Location(source, path="lldp"),
                         '{"lldp": {…}} (json) or {"lldp": […]} (json0)')
    return root


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             type(None): "null", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _as_list(node: Any) -> list[Any]:
    if node is None:
        return []
    return node if isinstance(node, list) else [node]


def _json0_entries(root: list[Any], source: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(interface name, body, path) for each interface entry of a json0 document."""
    for i, part in enumerate(root):
        path = f"lldp[{i}]"
        if not isinstance(part, dict):
            raise ParseError(f"found {_kind(part)}", Location(source, path=path),
                             "an object holding interface entries")
        for j, entry in enumerate(_as_list(part.get("interface"))):
            entry_path = f"{path}.interface[{j}]"
            yield _entry_name(entry, entry_path, source), entry, entry_path


def _entry_name(entry: Any, path: str, source: str) -> str:
    """The ``name`` of a json0-shaped interface entry."""
    if not isinstance(entry, dict):
        raise ParseError(f"interface entry is {_kind(entry)}", Location(source, path=path),
                         "an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ParseError("interface entry has no name", Location(source, path=path),
                         'a "name" field with the local interface')
    return name.strip()


def _json_entries(root: dict[str, Any], source: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(interface name, body, path) for each entry of a json (collapsed) document."""
    interfaces = root.get("interface")
    if isinstance(interfaces, dict):
        yield from _keyed_entries(interfaces, "lldp.interface", source)
    elif isinstance(interfaces, list):
        for j, entry in enumerate(interfaces):
            yield from _keyed_entries(entry, f"lldp.interface[{j}]", source)
    elif interfaces is not None:
        raise ParseError(f"found {_kind(interfaces)}", Location(source, path="lldp.interface"),
                         "an interface object or a list of them")


def _keyed_entries(entry: Any, path: str, source: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Entries re-keyed by interface name (``{"eth0": {…}}``), or a json0-shaped one."""
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        yield _entry_name(entry, path, source), entry, path
        return
    unnamed = not isinstance(entry, dict) or not entry or _INTERFACE_KEYS & entry.keys()
    if unnamed or not all(isinstance(body, dict) for body in entry.values()):
        raise ParseError("interface entry has no name", Location(source, path=path),
                         '{"<interface>": {…}}')
    for name, body in entry.items():
        if not name.strip():
            raise ParseError("interface entry has no name", Location(source, path=path),
                             '{"<interface>": {…}}')
        yield name.strip(), body, f"{path}.{name}"


def _json_draft(name: str, body: dict[str, Any], path: str, source: str) -> _Draft:
    """One neighbour from an interface body, in either JSON shape."""
    if _NOT_NEIGHBOUR_KEYS & body.keys():
        raise WrongFormatError("lldpcli show interfaces/statistics output",
                               "lldpcli show neighbors output", Location(source, path=path))
    sysname, chassis = _chassis(body.get("chassis"), f"{path}.chassis", source)
    port = _object(body.get("port"), f"{path}.port", source)
    chassis_type, chassis_id = _typed_id(chassis.get("id"), f"{path}.chassis.id", source)
    port_type, port_id = _typed_id(port.get("id"), f"{path}.port.id", source)
    ttl_node, ttl_path = (port, f"{path}.port.ttl") if "ttl" in port else (
        chassis, f"{path}.chassis.ttl")
    return _Draft(
        interface=name,
        chassis_id=chassis_id,
        chassis_id_type=chassis_type,
        chassis_name=sysname or _text(chassis.get("name"), f"{path}.chassis.name", source),
        port_id=port_id,
        port_id_type=port_type,
        port_descr=_text(port.get("descr"), f"{path}.port.descr", source),
        vlans=_json_vlans(body.get("vlan"), f"{path}.vlan", source),
        mgmt_ips=_texts(chassis.get("mgmt-ip"), f"{path}.chassis.mgmt-ip", source),
        ttl=_ttl(_text(ttl_node.get("ttl"), ttl_path, source), Location(source, path=ttl_path)),
    )


def _object(node: Any, path: str, source: str) -> dict[str, Any]:
    """An element as an object: json0 wraps it in a one-element list, json does not."""
    if isinstance(node, list):
        node = node[0] if node else None
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ParseError(f"found {_kind(node)}", Location(source, path=path), "an object")
    return node


def _chassis(node: Any, path: str, source: str) -> tuple[str | None, dict[str, Any]]:
    """(system name from the key, chassis body); json keys the chassis by SysName."""
    chassis = _object(node, path, source)
    if len(chassis) == 1:
        ((key, inner),) = chassis.items()
        if isinstance(inner, dict) and "id" in inner:
            return _clean(key), inner
    return None, chassis


def _typed_id(node: Any, path: str, source: str) -> tuple[str | None, str | None]:
    """(subtype, value) of a chassis or port id element."""
    if node is None or isinstance(node, str):
        return None, _clean(node)
    element = _object(node, path, source)
    return (_text(element.get("type"), f"{path}.type", source),
            _text(element.get("value"), f"{path}.value", source))


def _text(node: Any, path: str, source: str) -> str | None:
    """A string element: ``"x"`` (json), ``[{"value": "x"}]`` (json0) or ``{"value": "x"}``."""
    if isinstance(node, list):
        node = node[0] if node else None
    if isinstance(node, dict):
        node = node.get("value")
    if node is None or isinstance(node, str):
        return _clean(node)
    if isinstance(node, int | float) and not isinstance(node, bool):
        return str(node)
    raise ParseError(f"found {_kind(node)}", Location(source, path=path), "a string")


def _texts(node: Any, path: str, source: str) -> list[str]:
    """A repeated string element, as a string (one) or a list (several)."""
    values = (_text(item, f"{path}[{i}]", source) for i, item in enumerate(_as_list(node)))
    return [value for value in values if value is not None]


def _json_vlans(node: Any, path: str, source: str) -> list[int]:
    """VLAN ids of ``vlan`` entries: objects with ``vlan-id`` or bare names/ids."""
    ids: list[int] = []
    for i, item in enumerate(_as_list(node)):
        where = Location(source, path=f"{path}[{i}]")
        if isinstance(item, dict) and item.get("vlan-id") is not None:
            raw = _text(item["vlan-id"], f"{where.path}.vlan-id", source)
            ids += [] if raw is None else [_vlan_id(raw, where)]
        else:
            ids += _vlan_from_name(_text(item, where.path or "", source))
    return ids


def _vlan_from_name(name: str | None) -> list[int]:
    """The id in a VLAN name like ``100`` or ``vlan100``; a name without one tells nothing."""
    match = _VLAN_NAME.fullmatch(name or "")
    return [int(match.group(1))] if match and int(match.group(1)) <= 4095 else []


# -- keyvalue --


@dataclass
class _KvRecord:
    """The lines of one neighbour: path below the interface → [(line, value)]."""

    interface: str
    fields: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def chassis_id_key(self) -> str | None:
        return next((key for key in self.fields if _is_id_key(key, "chassis")), None)

    def starts_new(self, interface: str, path: str) -> bool:
        """Whether a line for ``interface``/``path`` begins the next neighbour."""
        if interface != self.interface:
            return True
        if path in _NEIGHBOUR_START:
            return path in self.fields
        return _is_id_key(path, "chassis") and self.chassis_id_key() is not None

    def first(self, *paths: str) -> tuple[int, str] | None:
        return next((self.fields[path][0] for path in paths if path in self.fields), None)


def _is_id_key(path: str, section: str) -> bool:
    head, _, subtype = path.partition(".")
    return head == section and subtype in _ID_TYPES


def _parse_keyvalue(text: str, source: str) -> list[_Draft]:
    records: list[_KvRecord] = []
    for line, key, value in _kv_lines(text, source):
        split = _split_key(key, line, source)
        if split is None:
            continue
        interface, path = split
        if not records or records[-1].starts_new(interface, path):
            records.append(_KvRecord(interface))
        records[-1].fields.setdefault(path, []).append((line, value))
    return [_kv_draft(record, source) for record in records]


def _kv_lines(text: str, source: str) -> list[tuple[int, str, str]]:
    """(line number, key, value) per line; a multi-line description is joined back."""
    lines: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("lldp."):
            if lines and lines[-1][1].endswith(_MULTILINE_KEYS):
                # lldpd prints a description's own newlines verbatim in keyvalue.
                previous = lines[-1]
                lines[-1] = (previous[0], previous[1], f"{previous[2]}\n{line}")
                continue
            raise ParseError(f"line does not start with 'lldp.': {line[:60]!r}",
                             Location(source, number), _KV_EXPECTED)
        key, sep, value = line.partition("=")
        if not sep:
            raise ParseError(f"line has no '=': {line[:60]!r}", Location(source, number),
                             _KV_EXPECTED)
        lines.append((number, key.strip(), value))
    return lines


def _split_key(key: str, line: int, source: str) -> tuple[str, str] | None:
    """(interface, path below it) of ``lldp.<iface>.<path>``; None for unknown paths.

    Interface names may hold dots (``bond0.100``), so the interface ends just before
    the first component that lldpd prints directly under an interface.
    """
    parts = key.split(".")[1:]
    if not parts[0]:
        raise ParseError("interface entry has no name", Location(source, line), _KV_EXPECTED)
    cut = next((k for k in range(1, len(parts)) if parts[k] in _INTERFACE_KEYS), None)
    if cut is None:
        return None
    return ".".join(parts[:cut]), ".".join(parts[cut:])


def _kv_draft(record: _KvRecord, source: str) -> _Draft:
    """One neighbour from its keyvalue lines."""
    if _NOT_NEIGHBOUR_KEYS & {path.split(".")[0] for path in record.fields}:
        line = next(iter(record.fields.values()))[0][0]
        raise WrongFormatError("lldpcli show interfaces/statistics output",
                               "lldpcli show neighbors output", Location(source, line))
    chassis_type, chassis_id = _kv_typed(record, "chassis")
    port_type, port_id = _kv_typed(record, "port")
    ttl = record.first("port.ttl", "chassis.ttl", "ttl")
    return _Draft(
        interface=record.interface,
        chassis_id=chassis_id,
        chassis_id_type=chassis_type,
        chassis_name=_kv_text(record.first("chassis.name")),
        port_id=port_id,
        port_id_type=port_type,
        port_descr=_kv_text(record.first("port.descr")),
        vlans=[_vlan_id(value, Location(source, line))
               for line, value in record.fields.get("vlan.vlan-id", [])],
        mgmt_ips=[ip for _, raw in record.fields.get("chassis.mgmt-ip", [])
                  if (ip := _clean(raw))],
        ttl=None if ttl is None else _ttl(ttl[1], Location(source, ttl[0])),
    )


def _kv_typed(record: _KvRecord, section: str) -> tuple[str | None, str | None]:
    """(subtype, value) from ``<section>.<subtype>=<value>`` (``chassis.mac=…``)."""
    key = next((key for key in record.fields if _is_id_key(key, section)), None)
    if key is None:
        return None, None
    return key.partition(".")[2], _clean(record.fields[key][0][1])


def _kv_text(entry: tuple[int, str] | None) -> str | None:
    return None if entry is None else _clean(entry[1])
