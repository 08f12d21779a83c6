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

import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from topology.errors import Location, ParseError, WrongFormatError
from topology.source import bounded_int, paused_gc

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
#: Keyvalue paths read once (their first line) and read as lists (every line).
_READ_PATHS = frozenset({"chassis.name", "port.descr", "port.ttl", "chassis.ttl", "ttl"})
_LIST_PATHS = frozenset({"vlan.vlan-id", "chassis.mgmt-ip"})
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
    with paused_gc():
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
        """The frozen neighbour; every field was checked on the way in, so it is built
        without a second validation (a third of the parse's time on big captures)."""
        mgmt_ips = list(dict.fromkeys(self.mgmt_ips))
        return LldpNeighbor.model_construct(
            **{**self.__dict__, "vlans": sorted(set(self.vlans)), "mgmt_ips": mgmt_ips,
               "mgmt_ip": mgmt_ips[0] if mgmt_ips else None})


def _merge(drafts: Iterable[_Draft]) -> list[LldpNeighbor]:
    """One neighbour per (interface, chassis), sorted by interface (stable).

    A sighting without a chassis id is a fragment of another one when lines came out of
    order: named, it joins its interface's neighbour of that name; unnamed, its
    interface's first neighbour. Only an interface with nothing better keeps one
    neighbour built from fragments — never duplicated partial neighbours.
    """
    kept: list[_Draft] = []
    by_key: dict[tuple[str, str, str], _Draft] = {}
    partial: list[_Draft] = []
    for draft in drafts:
        key = draft.identity()
        if key is None or not draft.chassis_id:
            partial.append(draft)
        elif key in by_key:
            by_key[key].absorb(draft)
        else:
            by_key[key] = draft
            kept.append(draft)
    on_interface: dict[str, list[_Draft]] = {}
    for draft in kept:
        on_interface.setdefault(draft.interface, []).append(draft)
    for draft in partial:
        same = on_interface.setdefault(draft.interface, [])
        owner = _owner(draft, same)
        if owner is None:
            kept.append(draft)
            same.append(draft)
        else:
            owner.absorb(draft)
    kept.sort(key=lambda draft: draft.interface)
    return [draft.freeze() for draft in kept]


def _owner(fragment: _Draft, same: list[_Draft]) -> _Draft | None:
    """The neighbour (of those on its interface) a fragment belongs to: the one of its
    name if it is named, else the first."""
    if fragment.chassis_name is not None:
        named = [d for d in same if d.chassis_name in (None, fragment.chassis_name)]
        return next((d for d in named if d.chassis_name == fragment.chassis_name),
                    named[0] if named and named[0].chassis_id else None)
    return same[0] if same else None


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
        return json.loads(text, parse_int=bounded_int)
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
    """The lines of one neighbour: path below the interface → its first (line, value);
    list paths (VLANs, addresses) keep every line in ``lists``."""

    interface: str
    fields: dict[str, tuple[int, str]] = field(default_factory=dict)
    lists: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    def chassis_id_key(self) -> str | None:
        return next((key for key in self.fields if _is_id_key(key, "chassis")), None)

    def starts_new(self, path: str) -> bool:
        """Whether a line for ``path`` (of this record's interface) begins the next
        neighbour on that interface."""
        if path in _NEIGHBOUR_START:
            return path in self.fields
        return _is_id_key(path, "chassis") and self.chassis_id_key() is not None

    def add(self, path: str, line: int, value: str) -> None:
        if path in _LIST_PATHS:
            self.lists.setdefault(path, []).append((line, value))
        self.fields.setdefault(path, (line, value))

    def first(self, *paths: str) -> tuple[int, str] | None:
        return next((self.fields[path] for path in paths if path in self.fields), None)


def _is_id_key(path: str, section: str) -> bool:
    head, _, subtype = path.partition(".")
    return head == section and subtype in _ID_TYPES


def _parse_keyvalue(text: str, source: str) -> list[_Draft]:
    """Group lines by interface, wherever they are (pasted or concatenated output may
    interleave interfaces); within one interface a repeated start key begins the next
    neighbour, so several neighbours on one interface keep lldpd's order."""
    records: list[_KvRecord] = []
    current: dict[str, _KvRecord] = {}
    for line, key, value in _kv_lines(text, source):
        split = _split_key(key, line, source)
        if split is None:
            continue
        interface, path = split
        if not _kept(path):
            continue
        record = current.get(interface)
        if record is None or record.starts_new(path):
            record = current[interface] = _KvRecord(interface)
            records.append(record)
        record.add(sys.intern(path), line, value)
    current.clear()
    records.reverse()  # popped from the end: each record is freed once it is a draft
    return [_kv_draft(records.pop(), source) for _ in range(len(records))]


def _kept(path: str) -> bool:
    """Whether a keyvalue path is read at all (the rest is dropped on arrival, so a
    capture costs memory for what the parse keeps, not for every line)."""
    return (path in _READ_PATHS or path in _LIST_PATHS or path in _NEIGHBOUR_START
            or path.partition(".")[0] in _NOT_NEIGHBOUR_KEYS
            or _is_id_key(path, "chassis") or _is_id_key(path, "port"))


def _kv_lines(text: str, source: str) -> Iterator[tuple[int, str, str]]:
    """(line number, key, value) per line, streamed (a capture may be megabytes); a
    multi-line description is joined back."""
    pending: tuple[int, str, str] | None = None
    for number, raw in enumerate(io.StringIO(text, newline=None), start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("lldp."):
            if pending is not None and pending[1].endswith(_MULTILINE_KEYS):
                # lldpd prints a description's own newlines verbatim in keyvalue.
                pending = (pending[0], pending[1], f"{pending[2]}\n{line}")
                continue
            raise ParseError(f"line does not start with 'lldp.': {line[:60]!r}",
                             Location(source, number), _KV_EXPECTED)
        key, sep, value = line.partition("=")
        if not sep:
            raise ParseError(f"line has no '=': {line[:60]!r}", Location(source, number),
                             _KV_EXPECTED)
        if pending is not None:
            yield pending
        pending = (number, key.strip(), value)
    if pending is not None:
        yield pending


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
        line = next(iter(record.fields.values()))[0]
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
               for line, value in record.lists.get("vlan.vlan-id", [])],
        mgmt_ips=[ip for _, raw in record.lists.get("chassis.mgmt-ip", [])
                  if (ip := _clean(raw))],
        ttl=None if ttl is None else _ttl(ttl[1], Location(source, ttl[0])),
    )


def _kv_typed(record: _KvRecord, section: str) -> tuple[str | None, str | None]:
    """(subtype, value) from ``<section>.<subtype>=<value>`` (``chassis.mac=…``)."""
    key = next((key for key in record.fields if _is_id_key(key, section)), None)
    if key is None:
        return None, None
    return key.partition(".")[2], _clean(record.fields[key][1])


def _kv_text(entry: tuple[int, str] | None) -> str | None:
    return None if entry is None else _clean(entry[1])
