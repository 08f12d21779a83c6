"""Parser for ``nvidia-smi topo -m`` (and ``topo -mp``) matrices.

The matrix says, for every pair of GPUs and RDMA NICs in one host, how the two are
joined: a bonded set of NVLinks (``NV#``) or a PCIe path ranked by how far it climbs
(``PIX`` < ``PXB`` < ``PHB`` < ``NODE`` < ``SYS``). GPU rows also carry the CPU and
NUMA affinity of the GPU.

Real captures are messy (docs/topology-inputs.md): ANSI escapes, ``\\r``, tabs turned into
runs of spaces or single spaces, indented pastes, wrapped, truncated or missing
legends, old driver spellings. So the parser reads whitespace tokens and takes one
cell per device column by position; what is left of a GPU row is its affinity,
read from the tab layout when that survived and from the shapes of the tokens when
it did not. Every step is linear in the input.

Other nvidia-smi outputs (``topo -p2p``, ``nvlink -s``, the status table) are
recognised and refused with :class:`~topology.errors.WrongFormatError`.

This module holds the models and the matrix itself; the affinity fields live in
:mod:`topology.nvsmi_affinity` and the legends, pasted command line and other
outputs in :mod:`topology.nvsmi_legend`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from topology.errors import Location, NotFoundError, ParseError, WrongFormatError
from topology.nvsmi_affinity import (
    MAX_CPU_ID,
    MAX_LINE_CHARS,
    MAX_NUMA_ID,
    affinity_shaped,
    assign_affinity,
    expand_ids,
    is_uint,
)
from topology.nvsmi_legend import (
    Legends,
    command_mode,
    identify_other,
    is_pcie_only,
    read_legends,
)
from topology.source import BOM

__all__ = [
    "MAX_CPU_ID", "MAX_DEVICES", "MAX_LINE_CHARS", "MAX_NUMA_ID", "SNIFF_CHARS", "WANTED",
    "LinkType", "NvsmiTopology", "SmiGpu", "SmiLink", "SmiNic",
    "looks_like_nvidia_smi", "parse_nvidia_smi", "pcie_level",
]

#: What this parser reads, as error messages name it.
WANTED = "an `nvidia-smi topo -m` matrix"
#: The biggest hosts have a few dozen devices; more columns than this is not a capture.
MAX_DEVICES = 512
#: The sniff reads only the start of a text.
SNIFF_CHARS = 65_536

_CODES_EXPECTED = "one of X, NV#, PIX, PXB, PHB, NODE, SYS (SOC on old drivers)"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_GPU_NAME = re.compile(r"GPU(\d{1,4})")
_NV_CODE = re.compile(r"NV([1-9]\d{0,2})")
_P2P_CODES = frozenset({"OK", "NS", "CNS", "GNS", "TNS", "DR", "U"})
_KIND_ORDER = ("cpu", "numa", "gpu_numa")
_HEADER_PHRASES = ((("CPU", "Affinity"), "cpu"), (("NUMA", "Affinity"), "numa"),
                   (("GPU", "NUMA", "ID"), "gpu_numa"))
#: How far after the matrix to look for its legends.
_LEGEND_WINDOW = 600


class LinkType(StrEnum):
    """How two devices are joined, with the codes ``nvidia-smi topo -m`` prints."""

    NV = "NV"
    PIX = "PIX"
    PXB = "PXB"
    PHB = "PHB"
    NODE = "NODE"
    SYS = "SYS"


_PCIE_CODES = {"PIX": LinkType.PIX, "PXB": LinkType.PXB, "PHB": LinkType.PHB,
               "NODE": LinkType.NODE, "SYS": LinkType.SYS, "SOC": LinkType.SYS}
_LEVELS = {LinkType.NV: 0, LinkType.PIX: 10, LinkType.PXB: 20, LinkType.PHB: 30,
           LinkType.NODE: 40, LinkType.SYS: 50}


def pcie_level(t: LinkType) -> int:
    """Return NVML's topology level of a link (PIX 10 … SYS 50); lower is closer.

    NVLink is not a PCIe path; it ranks 0, closer than any PCIe level.
    """
    return _LEVELS[t]


class SmiGpu(BaseModel):
    """One GPU of the matrix with the affinity fields of its row."""

    model_config = ConfigDict(frozen=True)

    name: str
    index: int
    cpu_affinity: str | None = None
    cpus: tuple[int, ...] = ()
    numa_affinity: int | list[int] | None = None
    gpu_numa_id: int | None = None


class SmiNic(BaseModel):
    """One NIC column: its column name, its RDMA device and its position among NICs."""

    model_config = ConfigDict(frozen=True)

    name: str
    device: str
    index: int


class SmiLink(BaseModel):
    """The link between two devices; ``nvlinks`` counts bonded NVLinks (0 for PCIe)."""

    model_config = ConfigDict(frozen=True)

    a: str
    b: str
    type: LinkType
    nvlinks: int = 0


class NvsmiTopology(BaseModel):
    """A parsed ``nvidia-smi topo -m`` matrix: devices and one link per device pair.

    ``pcie_only`` is true for a ``topo -mp`` matrix, whose GPU pairs show PCIe paths
    even where NVLink exists.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    pcie_only: bool
    gpus: tuple[SmiGpu, ...]
    nics: tuple[SmiNic, ...]
    links: tuple[SmiLink, ...]
    _pairs: dict[frozenset[str], SmiLink] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Index the links by unordered pair so that :meth:`link` is a lookup."""
        for link in self.links:
            self._pairs[frozenset((link.a, link.b))] = link

    def link(self, a: str, b: str) -> SmiLink:
        """Return the link between two devices, in either order."""
        names = [gpu.name for gpu in self.gpus] + [nic.name for nic in self.nics]
        for name in (a, b):
            if name not in names:
                raise NotFoundError("device", name, f"known devices: {', '.join(names)}")
        found = self._pairs.get(frozenset((a, b)))
        if a == b or found is None:
            raise NotFoundError("link", f"{a}-{b}", "the matrix has one link per pair "
                                "of distinct devices")
        return found

    def nics_nearest(self, gpu: str) -> list[str]:
        """Return the NICs with the lowest PCIe level to ``gpu``, in column order.

        On GB200 every GPU↔NIC cell is SYS, so every NIC comes back: NIC locality
        has to come from another source there.
        """
        if gpu not in {g.name for g in self.gpus}:
            raise NotFoundError("GPU", gpu, f"known GPUs: {', '.join(g.name for g in self.gpus)}")
        levels = [(pcie_level(self.link(gpu, nic.name).type), nic.name) for nic in self.nics]
        best = min((level for level, _ in levels), default=None)
        return [name for level, name in levels if level == best]


@dataclass(frozen=True)
class _Header:
    """The header line: device columns and the affinity columns after them."""

    number: int
    devices: tuple[str, ...]
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class _Row:
    """One matrix row: its cells by column and its affinity values by kind."""

    name: str
    number: int
    cells: tuple[str, ...]
    values: dict[str, str]


def parse_nvidia_smi(text: str, source: str = "<input>") -> NvsmiTopology:
    """Parse the output of ``nvidia-smi topo -m`` (or ``-mp``) into a typed topology.

    A paste may hold other text around the matrix; the first ``-m`` matrix is read.
    Raises :class:`ParseError` (with the source and line) for a malformed matrix and
    :class:`WrongFormatError` for another nvidia-smi output.
    """
    if not text.strip():
        raise ParseError("the input is empty", Location(source), WANTED)
    lines = _clean_lines(text)
    start = _locate_matrix(lines, source)
    header = _parse_header(lines[start], start + 1, source)
    rows, end = _read_rows(lines, header, source)
    links = _links(header, rows, source)
    legends = _legends_after(lines, end)
    pcie_only = is_pcie_only(any(link.type is LinkType.NV for link in links),
                             command_mode(lines, start), legends)
    return NvsmiTopology(
        source=source, pcie_only=pcie_only,
        gpus=tuple(_gpu(rows[name], source) for name in header.devices if _is_gpu(name)),
        nics=_nics(header.devices, legends.nic_devices), links=tuple(links))


def looks_like_nvidia_smi(text: str) -> bool:
    """Tell cheaply whether ``text`` is nvidia-smi output, reading only its start.

    True for a ``topo -m`` matrix and also for the nvidia-smi outputs that
    :func:`parse_nvidia_smi` refuses with a precise message (``topo -p2p``,
    ``nvlink``, ``-L``, ``-q``, the status table), so that format detection routes
    them here.
    """
    lines = _clean_lines(text[:SNIFF_CHARS])
    return next(_candidates(lines, 0, len(lines)), None) is not None or \
        identify_other(lines) is not None


# --- finding the matrix -------------------------------------------------------------

def _clean_lines(text: str) -> list[str]:
    """Split into lines without ANSI escapes, ``\\r`` or byte-order marks (a BOM may
    start any pasted part), keeping line numbers."""
    return _ANSI.sub("", text).replace("\r", "").replace(BOM, "").split("\n")


def _first_token(line: str) -> str | None:
    head = line.split(None, 1)
    return head[0] if head else None


def _next_nonblank(lines: Sequence[str], start: int) -> int | None:
    for index in range(start, len(lines)):
        if lines[index].strip():
            return index
    return None


def _is_code(token: str) -> bool:
    return token == "X" or token in _PCIE_CODES or _NV_CODE.fullmatch(token) is not None


def _is_gpu(name: str) -> bool:
    return _GPU_NAME.fullmatch(name) is not None


def _has_phrase(tokens: Sequence[str], phrase: tuple[str, ...]) -> bool:
    width = len(phrase)
    return any(tuple(tokens[k:k + width]) == phrase for k in range(len(tokens) - width + 1))


def _is_header_tokens(tokens: Sequence[str]) -> bool:
    """A header names devices and affinity columns and holds no cell codes."""
    if not tokens or any(_is_code(t) or t in _P2P_CODES for t in tokens):
        return False
    return _is_gpu(tokens[0]) or _has_phrase(tokens, ("CPU", "Affinity"))


def _candidates(lines: Sequence[str], start: int, stop: int) -> Iterator[int]:
    """Yield indexes of header-shaped lines followed by a row named like one of their columns."""
    for index in range(start, stop):
        text = lines[index]
        if len(text) > MAX_LINE_CHARS or ("GPU" not in text and "CPU" not in text):
            continue
        tokens = text.split()
        if not _is_header_tokens(tokens):
            continue
        row = _next_nonblank(lines, index + 1)
        if row is not None and len(lines[row]) <= MAX_LINE_CHARS \
                and _first_token(lines[row]) in _device_tokens(tokens):
            yield index


def _is_p2p_block(lines: Sequence[str], index: int) -> bool:
    """Tell a ``topo -p2p`` matrix (OK/NS/CNS… cells) from a ``-m`` one."""
    row = _next_nonblank(lines, index + 1)
    cells = lines[row].split()[1:] if row is not None else []
    if any(cell in _P2P_CODES for cell in cells):
        return True
    # A one-GPU p2p matrix has only its X cell: its legend tells it apart.
    if cells == ["X"] and row is not None:
        codes = _legends_after(lines, row + 1).codes or frozenset()
        return bool(codes & _P2P_CODES)
    return False


def _legends_after(lines: Sequence[str], end: int) -> Legends:
    """Read the legends after a matrix, up to the window's end or the next matrix."""
    stop = min(len(lines), end + _LEGEND_WINDOW)
    return read_legends(lines, end, next(_candidates(lines, end, stop), stop))


def _locate_matrix(lines: Sequence[str], source: str) -> int:
    """Return the index of the first ``-m`` header, or raise naming what was found."""
    first_p2p: int | None = None
    for index in _candidates(lines, 0, len(lines)):
        if not _is_p2p_block(lines, index):
            return index
        if first_p2p is None:
            first_p2p = index
    if first_p2p is not None:
        raise WrongFormatError("a `topo -p2p` matrix", WANTED, Location(source, first_p2p + 1))
    other = identify_other(lines)
    if other is not None:
        raise WrongFormatError(other[0], WANTED, Location(source, other[1]))
    for number, text in enumerate(lines, start=1):
        if "No devices were found" in text:
            raise ParseError("nvidia-smi found no GPUs ('No devices were found')",
                             Location(source, number), WANTED)
    raise ParseError("no `nvidia-smi topo -m` matrix found", Location(source),
                     "a header of device columns (GPU0 GPU1 … CPU Affinity) "
                     "followed by one row per column")


# --- header and rows ------------------------------------------------------------

def _device_tokens(tokens: Sequence[str]) -> Sequence[str]:
    """Return the device column names: the header tokens before ``CPU Affinity`` & co."""
    split = next((k for k, t in enumerate(tokens) if t in ("CPU", "NUMA", "GPU")), len(tokens))
    return tokens[:split]


def _parse_header(text: str, number: int, source: str) -> _Header:
    tokens = text.split()
    devices = tuple(_device_tokens(tokens))
    kinds = _header_kinds(tokens[len(devices):], Location(source, number))
    _check_devices(devices, Location(source, number))
    return _Header(number, devices, kinds)


def _header_kinds(tokens: Sequence[str], where: Location) -> tuple[str, ...]:
    """Read the affinity column names (``CPU Affinity`` …) after the device columns."""
    kinds: list[str] = []
    k = 0
    while k < len(tokens):
        for words, kind in _HEADER_PHRASES:
            if tuple(tokens[k:k + len(words)]) == words:
                kinds.append(kind)
                k += len(words)
                break
        else:
            raise ParseError(f"unexpected header text {' '.join(tokens[k:k + 3])!r} after "
                             "the device columns", where,
                             "the columns CPU Affinity, NUMA Affinity, GPU NUMA ID")
    if kinds != sorted(set(kinds), key=_KIND_ORDER.index):
        raise ParseError(f"affinity columns repeated or out of order: {kinds}", where,
                         "CPU Affinity, NUMA Affinity, GPU NUMA ID in that order")
    return tuple(kinds)


def _check_devices(devices: Sequence[str], where: Location) -> None:
    if not any(_is_gpu(name) for name in devices):
        raise ParseError("the matrix header has no GPU columns", where,
                         "device columns GPU0, GPU1, … before any NIC column")
    if len(devices) > MAX_DEVICES:
        raise ParseError(f"the header names {len(devices)} devices; a host has far fewer",
                         where, f"at most {MAX_DEVICES} device columns")
    seen: set[str] = set()
    for name in devices:
        if name in seen:
            raise ParseError(f"column {name!r} appears twice in the header", where,
                             "each device column once")
        seen.add(name)


def _read_rows(lines: Sequence[str], header: _Header,
               source: str) -> tuple[dict[str, _Row], int]:
    """Read one row per header column; return them by name and the index after them."""
    rows: dict[str, _Row] = {}
    wanted = set(header.devices)
    index = header.number
    while len(rows) < len(header.devices):
        missing = (name for name in header.devices if name not in rows)
        found = _next_nonblank(lines, index)
        if found is None:
            raise ParseError(f"the matrix ends after {len(rows)} of {len(header.devices)} "
                             f"rows; no row for {', '.join(missing)}",
                             Location(source, len(lines)), "one row per header column")
        name = _first_token(lines[found]) or ""
        where = Location(source, found + 1)
        if name not in wanted:
            raise ParseError(f"found {name[:40]!r} where the row for {next(missing)} was expected "
                             f"(the matrix has {len(rows)} of {len(header.devices)} rows)",
                             where, "rows named like the header columns")
        if name in rows:
            raise ParseError(f"row {name} appears twice (first on line {rows[name].number})",
                             where, "one row per header column")
        rows[name] = _parse_row(lines[found], found + 1, header, source)
        index = found + 1
    return rows, index


def _parse_row(text: str, number: int, header: _Header, source: str) -> _Row:
    where = Location(source, number)
    if len(text) > MAX_LINE_CHARS:
        raise ParseError(f"line is {len(text)} characters long", where, "a matrix row")
    name, *rest = text.split()
    count = len(header.devices)
    _check_cells(name, rest, header, where)
    extras = rest[count:]
    if not _is_gpu(name):
        if extras:
            raise ParseError(f"NIC row {name} has {len(extras)} field(s) after its {count} "
                             "cells", where, f"{count} cells and nothing after them")
        return _Row(name, number, tuple(rest), {})
    values = assign_affinity(text, extras, name, count, header.kinds, where)
    return _Row(name, number, tuple(rest[:count]), values)


def _check_cells(name: str, rest: Sequence[str], header: _Header, where: Location) -> None:
    """Check a row has exactly one known code per column, naming the first fault."""
    count = len(header.devices)
    for k in range(count):
        token = rest[k] if k < len(rest) else None
        if token is not None and _is_code(token):
            continue
        if token is None or affinity_shaped(token):
            raise _ragged(name, k, count, header, where)
        raise ParseError(f"unknown link code {token[:40]!r} in row {name}, column "
                         f"{header.devices[k]}", where, _CODES_EXPECTED)
    more = next((k for k, t in enumerate(rest[count:]) if not _is_code(t)), len(rest) - count)
    if more:
        raise _ragged(name, count + more, count, header, where)


def _ragged(name: str, got: int, count: int, header: _Header, where: Location) -> ParseError:
    span = f"{header.devices[0]} … {header.devices[-1]}" if count > 1 else header.devices[0]
    return ParseError(f"row {name} has {got} cells, expected {count}", where,
                      f"one cell per column ({span})")


def _gpu(row: _Row, source: str) -> SmiGpu:
    where = Location(source, row.number)
    cpu = row.values.get("cpu", "")
    cpu_affinity = cpu if cpu not in ("", "N/A") else None
    numa = row.values.get("numa", "")
    nodes = expand_ids(numa, MAX_NUMA_ID, "NUMA affinity", where) if numa not in ("", "N/A") else []
    gpu_numa = row.values.get("gpu_numa", "")
    return SmiGpu(
        name=row.name, index=int(row.name[3:]), cpu_affinity=cpu_affinity,
        cpus=tuple(expand_ids(cpu_affinity, MAX_CPU_ID, "CPU affinity", where))
        if cpu_affinity else (),
        numa_affinity=None if not nodes else nodes[0] if len(nodes) == 1 else nodes,
        gpu_numa_id=int(gpu_numa) if is_uint(gpu_numa) else None)


def _nics(devices: Sequence[str], legend: dict[str, str]) -> tuple[SmiNic, ...]:
    names = [name for name in devices if not _is_gpu(name)]
    return tuple(SmiNic(name=name, device=legend.get(name, name), index=k)
                 for k, name in enumerate(names))


# --- links ------------------------------------------------------------------------

def _links(header: _Header, rows: dict[str, _Row], source: str) -> list[SmiLink]:
    """Check the diagonal and symmetry, and build one link per unordered pair."""
    devices = header.devices
    links: list[SmiLink] = []
    for i, a in enumerate(devices):
        row_a = rows[a]
        if row_a.cells[i] != "X":
            raise ParseError(f"the diagonal cell of row {a} is {row_a.cells[i]!r}",
                             Location(source, row_a.number), "X where a device meets itself")
        for j in range(i + 1, len(devices)):
            b = devices[j]
            links.append(_link(row_a, rows[b], row_a.cells[j], rows[b].cells[i], source))
    return links


def _link(row_a: _Row, row_b: _Row, cell: str, mirror: str, source: str) -> SmiLink:
    a, b = row_a.name, row_b.name
    for code, row, other in ((cell, row_a, b), (mirror, row_b, a)):
        if code == "X":
            raise ParseError(f"X off the diagonal in row {row.name}, column {other}",
                             Location(source, row.number), "X only where a device meets itself")
    if _normal(cell) != _normal(mirror):
        raise ParseError(f"the matrix is not symmetric: {a}→{b} is {cell} (line {row_a.number}) "
                         f"but {b}→{a} is {mirror}", Location(source, row_b.number),
                         "the same link type both ways")
    nv = _NV_CODE.fullmatch(cell)
    if nv is None:
        return SmiLink(a=a, b=b, type=_PCIE_CODES[cell], nvlinks=0)
    if not (_is_gpu(a) and _is_gpu(b)):
        raise ParseError(f"{cell} between {a} and {b}: only GPUs have NVLinks",
                         Location(source, row_a.number), "a PCIe code between a GPU and a NIC")
    return SmiLink(a=a, b=b, type=LinkType.NV, nvlinks=int(nv.group(1)))


def _normal(code: str) -> str:
    return "SYS" if code == "SOC" else code
