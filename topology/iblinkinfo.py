"""Parser for ``iblinkinfo`` (infiniband-diags, rdma-core): its node-by-node form and ``-l``.

``iblinkinfo`` walks the subnet like ``ibnetdiscover`` and prints every port of every
node with the state of its link and what is at the far end. Two layouts:

* classic (default): a header per node, then one line per port. A switch header
  carries its GUID (``Switch: 0x<guid> <description>:``), a CA or router header only
  its description (``CA: node01 mlx5_0:``). A switch's port line starts with the
  switch's LID and the port number, a CA's with the port GUID first; then the link in
  ``==( <width> <lane rate> Gbps <state>/ <physical state>)==>`` and the far end as LID,
  port and quoted description. A port that is down has no width or rate and an empty
  far end (``[  ] "" ( )``); ``-p`` adds ``(HOQ:… VL_Stall:…)`` after the link, and the
  far end's trailing parentheses may hold advice (``( Could be 53.125 Gbps)``);
* ``-l`` (``--line``): no headers; every line starts with the port GUID and the node's
  description (right-aligned in quotes) and names the far end's port GUID too.

Both become an :class:`~topology.ibnetdiscover.IbFabric` (with the ports that have no
cable in ``down_ports``): nodes and links, each cable once. What the layouts do not
say is inferred, and the docs say how: in classic form a far end is found by its LID
among the printed nodes (a CA is identified by its first printed port's GUID, which on
ConnectX is the node GUID); one that was never printed (a partial scan,
``--switches-only``) is identified by its LID in this capture (``lid:<n>@<file>``) and
taken for a switch if it is reached on a port above 2 or from a CA, or its description
is a managed switch's (``MF0;name:model``). In ``-l`` form a GUID printed with two or
more port numbers, or a port above 2, is a switch. Lane rates are mapped to their
generation (``25.78125`` → EDR); rates are nominal like ibnetdiscover's (4x EDR = 100).
Lines that are neither a header nor a port line (shell prompts, ``| grep`` residue,
comments) are skipped; a header or port line that does not parse is an error naming
its line.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from topology.cabling import normal_guid
from topology.errors import Location, ParseError
from topology.ibnetdiscover import IbFabric, IbLink, IbNode, NodeKind, link_gbit
from topology.source import paused_gc, strip_bom

#: Per-lane signalling rate iblinkinfo prints (Gb/s) → InfiniBand generation.
RATE_GENERATION = {"2.5": "SDR", "5.0": "DDR", "10.0": "QDR", "14.0625": "FDR",
                   "25.78125": "EDR", "53.125": "HDR", "106.25": "NDR", "212.5": "XDR"}

_HEADER_KINDS: dict[str, NodeKind] = {"Switch": "switch", "CA": "ca", "Router": "router"}
_GUID = r"0x([0-9a-fA-F]{1,16})"
_PORT = r"(\d{1,6})\s+(\d{1,4})\[[^\]]{0,8}\]"
_HEADER = re.compile(r"(Switch|CA|Router):\s+(?:" + _GUID + r"\s+)?(.*):$")
_SWITCH_LOCAL = re.compile(_PORT + r"$")
_CA_LOCAL = re.compile(_GUID + r"\s+" + _PORT + r"$")
_LINE_LOCAL = re.compile(_GUID + r'\s+"(.*)"\s+' + _PORT + r"$")
_REMOTE = re.compile(r"(?:" + _GUID + r"\s+)?" + _PORT + r'\s*"(.*)"\s*\(([^()]*)\)$')
_NO_REMOTE = re.compile(r'\[[^\]]{0,8}\]\s*""\s*\(\s*\)$|"Port not available"$')
_STATE = re.compile(r"([A-Za-z]+)/\s*([A-Za-z ]+?)\s*\)")
_WIDTH_RATE = re.compile(r"\b(\d{1,2})X\s+(\d{1,3}(?:\.\d{1,6})?)\s*Gbps(\s*\(FDR10\))?")
_MANAGED_SWITCH = re.compile(r"[^;:\s]*;[^;:]+:")
_SNIFF = re.compile(r"^\s*(?:0x[0-9a-fA-F]{16}\s+(?:\"[^\"\n]*\"\s+)?)?\d+\s+\d+\[[^\]\n]*\]"
                    r"\s*==\(", re.M)
_EXPECTED = ('iblinkinfo output ("Switch: 0x<guid> <name>:" headers and "<lid> <port>[  ] '
             '==( 4X 106.25 Gbps Active/  LinkUp)==>  <lid> <port>[  ] \\"<name>\\" ( )" lines)')


class IbPort(BaseModel, frozen=True):
    """A port printed without a cable at its far end (down, or no far end reported)."""

    node: str = Field(description="the node's GUID (or lid:<n>@<file> id)")
    port: int
    state: str = Field(description='"Down", or the state of a port with no far end')
    phys_state: str = Field(description='"Polling", "Disabled", …')


class IbLinkInfo(IbFabric, frozen=True):
    """An ``iblinkinfo`` capture: the subnet's nodes and cables, and its uncabled ports."""

    down_ports: list[IbPort] = Field(default_factory=list)


def looks_like_iblinkinfo(text: str) -> bool:
    """Cheap sniff: a port line with iblinkinfo's ``==(`` link near the start."""
    return bool(_SNIFF.search(text[:65536]))


def parse_iblinkinfo(text: str, source: str = "<input>") -> IbLinkInfo:
    """Parse ``iblinkinfo`` output (classic or ``-l``); the layout is read per line."""
    text = strip_bom(text)
    with paused_gc():
        reader = _Reader(source)
        for number, line in _lines(text):
            reader.line(line, number)
        if not reader.ports:
            raise ParseError("no iblinkinfo port line found", Location(source), _EXPECTED)
        return reader.fabric()


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line:
            yield number, line


@dataclass
class _Remote:
    guid: str | None
    lid: int
    port: int
    description: str


@dataclass
class _Port:
    node: str
    port: int
    state: str
    phys: str
    width: str | None
    speed: str | None
    remote: _Remote | None


@dataclass
class _Node:
    kind: NodeKind | None
    description: str
    lid: int | None = None


@dataclass
class _Reader:
    """Collects nodes and ports line by line; far ends are resolved at the end, when
    every printed node (and its LIDs) is known."""

    source: str
    nodes: dict[str, _Node] = field(default_factory=dict)
    lids: dict[int, str] = field(default_factory=dict)
    ports: list[_Port] = field(default_factory=list)
    header: tuple[NodeKind, str | None, str] | None = None
    header_node: str | None = None
    headers: int = 0

    def line(self, line: str, number: int) -> None:
        if line.startswith(("Switch:", "CA:", "Router:")):
            self._header(line, number)
        elif "==(" in line:
            self._port_line(line, number)

    def _error(self, what: str, line: str, number: int) -> ParseError:
        return ParseError(f"{what}: {line[:80]!r}", Location(self.source, number), _EXPECTED)

    def _header(self, line: str, number: int) -> None:
        found = _HEADER.match(line)
        kind = _HEADER_KINDS[line.split(":")[0]]
        if found is None or (kind == "switch") != (found.group(2) is not None):
            raise self._error("cannot read this node header", line, number)
        guid = normal_guid(found.group(2)) if found.group(2) else None
        self.header, self.header_node = (kind, guid, found.group(3).strip()), guid
        self.headers += 1
        if guid is not None:
            self._node(guid, kind, self.header[2])

    def _port_line(self, line: str, number: int) -> None:
        left, _, rest = line.partition("==(")
        body, arrow, right = rest.rpartition("==>")
        state = _STATE.search(body)
        if not arrow or state is None:
            raise self._error("cannot read this port line", line, number)
        node, port = self._local(left.strip(), line, number)
        rate = _WIDTH_RATE.search(body)
        width, speed = (f"{rate.group(1)}x", _generation(rate)) if rate else (None, None)
        self.ports.append(_Port(node, port, state.group(1), state.group(2), width, speed,
                                self._remote(right.strip(), line, number)))

    def _local(self, left: str, line: str, number: int) -> tuple[str, int]:
        found = _LINE_LOCAL.fullmatch(left)
        if found is not None:
            guid = normal_guid(found.group(1))
            self._node(guid, None, found.group(2).strip(), int(found.group(3)))
            return guid, int(found.group(4))
        found = _CA_LOCAL.fullmatch(left)
        if found is not None:
            return self._ca_port(normal_guid(found.group(1)), int(found.group(2))), int(
                found.group(3))
        found = _SWITCH_LOCAL.fullmatch(left)
        if found is None:
            raise self._error("cannot read where this port line starts", line, number)
        if self.header is None or self.header[0] != "switch" or self.header_node is None:
            raise self._error("a switch port line outside a Switch: block", line, number)
        self.lids[int(found.group(1))] = self.header_node
        self.nodes[self.header_node].lid = int(found.group(1))
        return self.header_node, int(found.group(2))

    def _ca_port(self, guid: str, lid: int) -> str:
        """A CA port line: the node is the header's (first port's GUID) or, with no
        header above it (``| grep`` output), the port's own."""
        if self.header is not None and self.header[0] != "switch":
            if self.header_node is None:
                self.header_node = guid
                self._node(guid, self.header[0], self.header[2], lid)
            guid = self.header_node
        else:
            self._node(guid, "ca", "", lid)
        self.lids[lid] = guid
        return guid

    def _remote(self, right: str, line: str, number: int) -> _Remote | None:
        if _NO_REMOTE.fullmatch(right):
            return None
        found = _REMOTE.fullmatch(right)
        if found is None:
            raise self._error("cannot read the far end of this port line", line, number)
        guid = normal_guid(found.group(1)) if found.group(1) else None
        return _Remote(guid, int(found.group(2)), int(found.group(3)), found.group(4).strip())

    def _node(self, guid: str, kind: NodeKind | None, description: str,
              lid: int | None = None) -> None:
        held = self.nodes.get(guid)
        if held is None:
            self.nodes[guid] = _Node(kind, description, lid)
            return
        held.kind = held.kind or kind
        held.description = held.description or description
        held.lid = held.lid if held.lid is not None else lid

    # -- resolving -----------------------------------------------------------------------
    def fabric(self) -> IbLinkInfo:
        links: dict[tuple[tuple[str, int], tuple[str, int]], IbLink] = {}
        down: list[IbPort] = []
        seen: dict[str, set[int]] = defaultdict(set)
        for item in self.ports:
            seen[item.node].add(item.port)
            if item.remote is None:
                down.append(IbPort(node=item.node, port=item.port, state=item.state,
                                   phys_state=item.phys))
                continue
            far = self._far_end(item, item.remote)
            seen[far].add(item.remote.port)
            ends = sorted(((item.node, item.port), (far, item.remote.port)))
            links.setdefault((ends[0], ends[1]), IbLink(
                a=ends[0][0], a_port=ends[0][1], b=ends[1][0], b_port=ends[1][1],
                width=item.width, speed=item.speed, gbit=link_gbit(item.width, item.speed)))
        nodes = [IbNode(kind=node.kind or _kind_by_ports(seen[guid], node.description),
                        guid=guid, description=node.description, lid=node.lid)
                 for guid, node in self.nodes.items()]
        return IbLinkInfo(source=self.source, format="classic" if self.headers else "line",
                          nodes=nodes, links=list(links.values()), down_ports=down)

    def _far_end(self, item: _Port, remote: _Remote) -> str:
        if remote.guid is not None:
            self._node(remote.guid, None, remote.description, remote.lid)
            return remote.guid
        guid = self.lids.get(remote.lid)
        if guid is not None:
            self._node(guid, None, remote.description)
            return guid
        guid = f"lid:{remote.lid}@{self.source}"
        from_ca = self.nodes[item.node].kind in ("ca", "router")
        switch = from_ca or remote.port > 2 or bool(_MANAGED_SWITCH.match(remote.description))
        self._node(guid, "switch" if switch else "ca", remote.description, remote.lid)
        return guid


def _generation(rate: re.Match[str]) -> str | None:
    if rate.group(3):
        return "FDR10"
    return RATE_GENERATION.get(rate.group(2))


def _kind_by_ports(ports: set[int], description: str) -> NodeKind:
    """``-l`` names no node kinds: several ports, or a high one, make a switch."""
    if len(ports) > 1 or max(ports, default=1) > 2 or _MANAGED_SWITCH.match(description):
        return "switch"
    return "ca"


def parse_subnet_capture(text: str, source: str = "<input>") -> IbFabric:
    """An InfiniBand subnet capture, ``ibnetdiscover`` (plain or ``-p``) or ``iblinkinfo``
    (classic or ``-l``), whichever the text is; what ``topo build``'s subnet inputs,
    the inventory's ``ibnetdiscover:`` list and the subnet feed read."""
    from topology.ibnetdiscover import looks_like_ibnetdiscover, parse_ibnetdiscover

    if looks_like_iblinkinfo(text) and not looks_like_ibnetdiscover(text):
        return parse_iblinkinfo(text, source)
    return parse_ibnetdiscover(text, source)
