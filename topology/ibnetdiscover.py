"""Parser for InfiniBand subnet discovery (``ibnetdiscover``, plain and ``-p`` ports form).

InfiniBand has no LLDP: which HCA is cabled to which switch port is what the subnet
manager's view says, and ``ibnetdiscover`` (infiniband-diags, part of rdma-core) prints
it. Two forms:

* plain: per node a header (``Switch 65 "S-<guid>" # "<description>" enhanced port 0
  lid 73 lmc 0``, ``Ca 1 "H-<guid>" # "<description>"``, ``Rt …``) preceded by
  ``vendid=``/``devid=``/``sysimgguid=``/``switchguid=``/``caguid=`` lines, then one line
  per connected port: ``[1] "H-<guid>"[1](<port guid>) # "<description>" lid 647
  4xNDR`` under a switch, ``[1](<port guid>) "S-<guid>"[17] # lid 657 lmc 0 "<switch>"
  lid 73 4xNDR`` under a CA. GUIDs in ids are node GUIDs; ``-g`` adds chassis lines,
  ``--node-name-map`` replaces descriptions, ``-f`` appends ``s= w= v=``;
* ``-p``: one line per port, ``CA 78 1 0x<port guid> 4x HDR - SW 51 79 0x<port guid> (
  'desc' - 'desc' )``, or without the part after ``-`` for a port with nothing
  attached. GUIDs there are *port* GUIDs (a switch's ports share one).

Both become one :class:`IbFabric`: nodes and links (each cable once, whichever side
printed it). Lines neither form knows are skipped (``-g`` grouping, shell prompts);
a line that starts like a node header or port line but does not parse is an error
naming its line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from topology.cabling import normal_guid
from topology.errors import Location, ParseError
from topology.source import paused_gc, strip_bom

#: ibnetdiscover's plain and ``-p`` forms; iblinkinfo's classic and ``-l`` (line) forms.
IbVariant = Literal["plain", "ports", "classic", "line"]
NodeKind = Literal["switch", "ca", "router"]

#: Nominal per-lane signalling of each InfiniBand generation, Gb/s (4x NDR = 400).
LANE_GBIT = {"SDR": 2.5, "DDR": 5.0, "QDR": 10.0, "FDR10": 10.0, "FDR": 14.0, "EDR": 25.0,
             "HDR": 50.0, "NDR": 100.0, "XDR": 200.0, "GDR": 400.0}
#: The SHARP aggregation node every Quantum switch exposes as a CA on its last port.
AGGREGATION_NODE = "Aggregation Node"

_KINDS: dict[str, NodeKind] = {"Switch": "switch", "Ca": "ca", "Rt": "router",
                               "SW": "switch", "CA": "ca", "RT": "router",
                               "S": "switch", "H": "ca", "R": "router"}
_HEADER = re.compile(r'(Switch|Ca|Rt)\s+(\d{1,6})\s+"([SHR])-(?:0x)?([0-9a-fA-F]{1,16})"'
                     r'(?:\s+#\s*"(?P<desc>(?:[^"\\]|\\.)*)"?(?P<rest>.*))?')
_HEADER_START = re.compile(r"(Switch|Ca|Rt)\s")
_LID = re.compile(r"\blid\s+(\d{1,6})")
_PORT_NUM = r"\[(\d{1,4})\](?:\[ext\s+\d{1,4}\])?"
_SWITCH_PORT = re.compile(
    _PORT_NUM + r'\s*"([SHR])-(?:0x)?([0-9a-fA-F]{1,16})"' + _PORT_NUM
    + r"\s*(?:\(([0-9a-fA-F]{1,16})\))?\s*(?:#\s*\"(?P<desc>[^\"]*)\"?(?P<rest>.*))?")
_CA_PORT = re.compile(
    _PORT_NUM + r"\s*\(([0-9a-fA-F]{1,16})\)\s*\"([SHR])-(?:0x)?([0-9a-fA-F]{1,16})\""
    + _PORT_NUM + r"\s*(?:\(([0-9a-fA-F]{1,16})\))?\s*(?:#(?P<rest>.*))?")
_RATE = re.compile(r"\b(\d{1,2})[xX]\s?([A-Z]{3}\d{0,2})\b")
_PORTS_LINE = re.compile(
    r"(SW|CA|RT)\s+(\d{1,6})\s+(\d{1,4})\s+0x([0-9a-fA-F]{1,16})\s+(\d{1,2})x\s+(\S+)"
    r"(?:\s+-\s+(SW|CA|RT)\s+(\d{1,6})\s+(\d{1,4})\s+0x([0-9a-fA-F]{1,16})\s*(.*))?\s*(.*)")
_PORTS_START = re.compile(r"(SW|CA|RT)\s+\d")
_PORTS_SNIFF = re.compile(r"^\s*(?:SW|CA)\s+\d+\s+\d+\s+0x[0-9a-fA-F]{16}\s+\d+x\s", re.M)
_PLAIN_SNIFF = re.compile(r'^\s*(?:Switch|Ca)\s+\d+\s+"[SH]-[0-9a-fA-F]+"', re.M)
_EXPECTED_PLAIN = 'ibnetdiscover output (Switch/Ca headers, [port] "S-<guid>"[port] lines)'
_EXPECTED_PORTS = "ibnetdiscover -p lines (CA 12 1 0x<guid> 4x NDR - SW 3 7 0x<guid> ( … ))"


class IbNode(BaseModel, frozen=True):
    """A switch, CA (HCA or aggregation node) or router of the subnet."""

    kind: NodeKind
    guid: str = Field(description="node GUID (plain form) or port GUID (-p form, iblinkinfo), "
                      "0x + 16 hex; iblinkinfo's far ends known only by LID: lid:<n>@<file>")
    description: str = Field(description="NodeDescription, e.g. 'node01 mlx5_0'")
    ports: int | None = Field(default=None, description="port count from the header")
    lid: int | None = None


class IbLink(BaseModel, frozen=True):
    """One cable: node ``a`` port ``a_port`` to node ``b`` port ``b_port``."""

    a: str
    a_port: int
    b: str
    b_port: int
    width: str | None = Field(default=None, description='"4x"')
    speed: str | None = Field(default=None, description='"NDR"')
    gbit: float | None = Field(default=None, description="nominal rate: width x lane rate")


class IbFabric(BaseModel, frozen=True):
    """Everything one ``ibnetdiscover`` capture says: nodes and cables."""

    source: str
    format: IbVariant
    nodes: list[IbNode]
    links: list[IbLink]

    def by_guid(self) -> dict[str, IbNode]:
        """Nodes by GUID."""
        return {node.guid: node for node in self.nodes}


def looks_like_ibnetdiscover(text: str) -> bool:
    """Cheap sniff: a node header or a ``-p`` port line near the start."""
    head = text[:65536]
    return bool(_PLAIN_SNIFF.search(head) or _PORTS_SNIFF.search(head))


def parse_ibnetdiscover(text: str, source: str = "<input>") -> IbFabric:
    """Parse ``ibnetdiscover`` (plain or ``-p``) output; the form is detected."""
    text = strip_bom(text)
    with paused_gc():
        reader = _Reader(source)
        if _PORTS_SNIFF.search(text[:65536]) and not _PLAIN_SNIFF.search(text[:65536]):
            reader.ports_form(text)
            variant: IbVariant = "ports"
        else:
            reader.plain_form(text)
            variant = "plain"
        if not reader.nodes:
            raise ParseError("no switch or CA found", Location(source),
                             _EXPECTED_PORTS if variant == "ports" else _EXPECTED_PLAIN)
        return IbFabric(source=source, format=variant, nodes=list(reader.nodes.values()),
                        links=list(reader.links.values()))


def link_gbit(width: str | None, speed: str | None) -> float | None:
    """Nominal rate of a link from ibnetdiscover's width and speed (``4x`` ``NDR`` → 400)."""
    if width is None or speed is None:
        return None
    lanes = int(width.lower().rstrip("x") or 0)
    lane = LANE_GBIT.get(speed.upper())
    return lanes * lane if lane is not None and lanes else None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.replace("\x1b[0m", "").strip()
        if line:
            yield number, line


@dataclass
class _Reader:
    source: str
    nodes: dict[str, IbNode] = field(default_factory=dict)
    links: dict[tuple[tuple[str, int], tuple[str, int]], IbLink] = field(default_factory=dict)

    # -- plain --------------------------------------------------------------------------
    def plain_form(self, text: str) -> None:
        current: IbNode | None = None
        for number, line in _lines(text):
            if _HEADER_START.match(line):
                current = self._header(line, number)
            elif line.startswith("["):
                if current is None:
                    raise ParseError("a port line before any Switch/Ca header",
                                     Location(self.source, number), _EXPECTED_PLAIN)
                self._plain_port(current, line, number)

    def _header(self, line: str, number: int) -> IbNode:
        found = _HEADER.match(line)
        if found is None:
            raise ParseError(f"cannot read this node header: {line[:80]!r}",
                             Location(self.source, number), _EXPECTED_PLAIN)
        kind = _KINDS[found.group(1)]
        lid = _LID.search(found.group("rest") or "")
        node = IbNode(kind=kind, guid=normal_guid(found.group(4)),
                      description=_description(found.group("desc")),
                      ports=int(found.group(2)), lid=int(lid.group(1)) if lid else None)
        return self._node(node)

    def _plain_port(self, node: IbNode, line: str, number: int) -> None:
        if node.kind == "switch":
            found = _SWITCH_PORT.match(line)
            fields = None if found is None else (found.group(1), found.group(2), found.group(3),
                                                 found.group(4), found.group("desc"),
                                                 found.group("rest"))
        else:
            found = _CA_PORT.match(line)
            fields = None if found is None else _ca_fields(found)
        if fields is None:
            raise ParseError(f"cannot read this port line: {line[:80]!r}",
                             Location(self.source, number), _EXPECTED_PLAIN)
        port, kind, guid, remote_port, description, rest = fields
        remote = self._node(IbNode(kind=_KINDS[kind], guid=normal_guid(guid),
                                   description=_description(description)))
        self._link(node.guid, int(port), remote.guid, int(remote_port), rest or "")

    # -- ports (-p) ---------------------------------------------------------------------
    def ports_form(self, text: str) -> None:
        for number, line in _lines(text):
            if not _PORTS_START.match(line):
                continue
            found = _PORTS_LINE.match(line)
            if found is None or (found.group(7) is None and found.group(12).startswith("-")):
                raise ParseError(f"cannot read this port line: {line[:80]!r}",
                                 Location(self.source, number), _EXPECTED_PORTS)
            self._ports_line(found)

    def _ports_line(self, found: re.Match[str]) -> None:
        (kind, lid, port, guid, width, speed, r_kind, r_lid, r_port, r_guid,
         names, alone) = found.groups()
        local_name, remote_name = _quoted_pair(names if r_kind else alone)
        local = self._node(IbNode(kind=_KINDS[kind], guid=normal_guid(guid),
                                  description=local_name, lid=int(lid)))
        if r_kind is None:
            return
        remote = self._node(IbNode(kind=_KINDS[r_kind], guid=normal_guid(r_guid),
                                   description=remote_name, lid=int(r_lid)))
        self._link(local.guid, int(port), remote.guid, int(r_port), f"{width}x{speed}")

    # -- shared -------------------------------------------------------------------------
    def _node(self, node: IbNode) -> IbNode:
        """Record a node; a header's fuller facts win over a port line's mention."""
        held = self.nodes.get(node.guid)
        if held is None or (held.ports is None and node.ports is not None):
            merged = node if held is None else node.model_copy(update={
                "description": node.description or held.description,
                "lid": node.lid if node.lid is not None else held.lid})
            self.nodes[node.guid] = merged
            return merged
        if not held.description and node.description:
            held = held.model_copy(update={"description": node.description})
            self.nodes[node.guid] = held
        return held

    def _link(self, a: str, a_port: int, b: str, b_port: int, rest: str) -> None:
        ends = sorted(((a, a_port), (b, b_port)))
        key = (ends[0], ends[1])
        if key in self.links:
            return
        rate = _RATE.search(rest)
        width, speed = (f"{rate.group(1)}x", rate.group(2)) if rate else (None, None)
        self.links[key] = IbLink(a=ends[0][0], a_port=ends[0][1], b=ends[1][0],
                                 b_port=ends[1][1], width=width, speed=speed,
                                 gbit=link_gbit(width, speed))


def _ca_fields(found: re.Match[str]) -> tuple[str, str, str, str, str | None, str]:
    """(port, remote kind, remote guid, remote port, remote description, rest) of a CA
    port line, whose comment is ``lid N lmc M "<remote>" lid K 4xNDR``."""
    rest = found.group("rest") or ""
    quoted = re.search(r'"([^"]*)"(.*)', rest)
    description = quoted.group(1) if quoted else None
    return (found.group(1), found.group(3), found.group(4), found.group(5), description,
            quoted.group(2) if quoted else rest)


def _description(raw: str | None) -> str:
    return (raw or "").replace('\\"', '"').strip()


def _quoted_pair(text: str) -> tuple[str, str]:
    """Descriptions of ``( 'a' - 'b' )`` or of a lone ``'a'`` (quotes may be missing)."""
    text = text.strip()
    pair = re.fullmatch(r"\(\s*'(.*)'\s+-\s+'(.*)'\s*\)", text)
    if pair:
        return pair.group(1).strip(), pair.group(2).strip()
    return text.strip("'").strip(), ""
