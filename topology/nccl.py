"""Parser for NCCL's topology XML (the file NCCL writes when ``NCCL_TOPO_DUMP_FILE`` is set).

Shape: ``system > cpu > pci (switches, nested) > pci (device) > gpu > nvlink`` and
``… > pci > nic > net``. Cloud images also ship hand-written files holding only ``pci``
entries (busid and class) under virtual bridges; a GPU is then a ``pci`` whose class is
``0x0302xx``/``0x0300xx`` and a NIC one whose class is ``0x02xxxx``. A ``nic`` may also
sit directly under ``cpu``. Unknown elements and attributes are ignored because NCCL
versions differ.

The input is untrusted: DOCTYPE and ENTITY declarations are refused before parsing (no
entity expansion), nesting is bounded and the text size is capped, so parsing time is
linear in the input.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from xml.parsers import expat

from pydantic import BaseModel

from topology.errors import Location, NotFoundError, ParseError
from topology.source import MAX_CAPTURE_BYTES, strip_bom

#: PCI class of the far end of an NVLink that goes to an NVSwitch.
NVSWITCH_CLASS = "0x068000"
#: PCI classes of the far end of an NVLink that goes to a peer GPU.
GPU_LINK_CLASSES = frozenset({"0x030000", "0x030200"})
#: Integers in real dumps (speeds in Mb/s, device numbers) have a few digits.
MAX_INT_DIGITS = 18
#: Real dumps nest about ten deep; the bound keeps the tree walk's recursion finite.
MAX_DEPTH = 64

_DECLARATION = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_BUSID = re.compile(r"(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])")
_PCI_CLASS = re.compile(r"0x([0-9a-f]{4}(?:[0-9a-f]{2})?)")
_BUSID_HINT = "a PCI address like 0000:18:00.0"


class NcclNvlink(BaseModel, frozen=True):
    """One ``nvlink`` entry of a GPU: ``count`` bonded links to ``target``."""

    target: str
    count: int
    tclass: str
    to_nvswitch: bool
    to_gpu: bool


class NcclGpu(BaseModel, frozen=True):
    """A GPU: from a ``gpu`` element or a bare ``pci`` entry of GPU class.

    ``pci_path`` lists the enclosing ``pci`` busids, outermost first, without the GPU's own.
    """

    busid: str
    dev: int | None = None
    rank: int | None = None
    sm: int | None = None
    gdr: bool | None = None
    numa: int | None = None
    pci_path: list[str] = []
    link_speed: str | None = None
    link_width: int | None = None
    nvlinks: list[NcclNvlink] = []


class NcclNet(BaseModel, frozen=True):
    """A network device (``net``) with the PCI placement of its ``nic``.

    A bare ``pci`` entry of network class (hand-written cloud files) becomes a net named
    after its busid, so that its locality is kept even though its device name is unknown.
    """

    name: str
    dev: int | None = None
    speed_mbps: int | None = None
    port: int | None = None
    latency: float | None = None
    gdr: bool | None = None
    guid: str | None = None
    busid: str | None = None
    numa: int | None = None
    pci_path: list[str] = []


class NcclCpu(BaseModel, frozen=True):
    """A ``cpu`` element (one NUMA node); a negative ``numaid`` is read as unknown."""

    numaid: int | None = None
    affinity: str | None = None
    arch: str | None = None
    vendor: str | None = None


class NcclTopology(BaseModel, frozen=True):
    """Everything read from one NCCL topology XML.

    ``pci_classes`` maps the busid of every ``pci`` entry that states a class to that
    class (``0x060400`` …); it is what tells a PCIe switch from another bridge.
    """

    source: str
    cpus: list[NcclCpu] = []
    gpus: list[NcclGpu] = []
    nets: list[NcclNet] = []
    pci_classes: dict[str, str] = {}

    def nvswitch_connected(self) -> bool:
        """True when there are GPUs and every one has an NVLink to an NVSwitch."""
        return bool(self.gpus) and all(_switch_links(gpu) > 0 for gpu in self.gpus)

    def nvlink_count(self, a_busid: str, b_busid: str) -> int:
        """NVLinks between two GPUs: direct peer links plus, when both reach NVSwitches,
        the smaller of their switch link counts; 0 for the same GPU or none at all."""
        a, b = self._gpu(a_busid), self._gpu(b_busid)
        if a.busid == b.busid:
            return 0
        direct = max(_peer_links(a, b.busid), _peer_links(b, a.busid))
        return direct + min(_switch_links(a), _switch_links(b))

    def pcie_switch_of(self, busid: str) -> str | None:
        """Busid of the nearest PCIe switch (class 0x0604xx) above a GPU or NIC; None when
        the device hangs directly off the CPU."""
        path = self._device_path(busid)
        for bridge in reversed(path):
            if self.pci_classes.get(bridge, "").startswith("0x0604"):
                return bridge
        return None

    def nearest_nets(self, gpu_busid: str) -> list[str]:
        """Names of the nets closest to a GPU: those under its deepest common PCIe
        ancestor, else those on its CPU, else (all equally far) every net."""
        gpu = self._gpu(gpu_busid)
        scored = [(_closeness(gpu, net), net.name) for net in self.nets]
        best = max((score for score, _ in scored), default=None)
        return list(dict.fromkeys(name for score, name in scored if score == best))

    def _gpu(self, busid: str) -> NcclGpu:
        wanted = _normalise_busid(busid) or busid
        for gpu in self.gpus:
            if gpu.busid == wanted:
                return gpu
        raise NotFoundError("GPU", busid, f"{self.source} lists {_busids(self.gpus)}")

    def _device_path(self, busid: str) -> list[str]:
        wanted = _normalise_busid(busid) or busid
        for gpu in self.gpus:
            if gpu.busid == wanted:
                return gpu.pci_path
        for net in self.nets:
            if net.busid == wanted:
                return net.pci_path
        raise NotFoundError("PCI device", busid, f"{self.source} has no GPU or NIC there")


def parse_nccl_xml(text: str, source: str = "<input>") -> NcclTopology:
    """Parse an NCCL topology XML; raises :class:`ParseError` naming source, line and path."""
    if len(text) > MAX_CAPTURE_BYTES:
        raise ParseError(f"input is larger than {MAX_CAPTURE_BYTES // (1024 * 1024)} MiB",
                         Location(source), "an NCCL topology XML")
    text = strip_bom(text)
    _refuse_declarations(text, source)
    root, lines = _read_tree(text, source)
    if root.tag != "system":
        raise ParseError(f"root element is <{_shown(root.tag)}>",
                         Location(source, lines[id(root)]), "<system>")
    walker = _Walker(source, lines)
    walker.system(root)
    return walker.result()


def looks_like_nccl_xml(text: str) -> bool:
    """Cheap sniff: does the document element (after prolog and comments) open ``<system``?"""
    head = text[:65536].lstrip("\ufeff \t\r\n")
    while head.startswith(("<?", "<!")):
        end = "-->" if head.startswith("<!--") else ">"
        stop = head.find(end)
        if stop < 0:
            return False
        head = head[stop + len(end):].lstrip(" \t\r\n")
    return re.match(r"<system[\s/>]", head) is not None


# --- reading the XML --------------------------------------------------------------------


def _refuse_declarations(text: str, source: str) -> None:
    """Refuse DTDs outright: ElementTree would expand internal entities (billion laughs)."""
    found = _DECLARATION.search(text)
    if found is None:
        return
    line = text.count("\n", 0, found.start()) + 1
    column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    raise ParseError(f"DOCTYPE/entities are not allowed (column {column})",
                     Location(source, line), "an NCCL topology XML without a DTD")


class _TreeReader:
    """Builds an ElementTree with expat directly, to record each element's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.builder = ET.TreeBuilder()
        self.parser = expat.ParserCreate(encoding="utf-8")
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        # Second guard behind the text scan: no declaration is ever processed.
        self.parser.StartDoctypeDeclHandler = self.refuse
        self.parser.EntityDeclHandler = self.refuse
        self.lines: dict[int, int] = {}
        self.depth = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"elements nested deeper than {MAX_DEPTH}",
                             Location(self.source, self.parser.CurrentLineNumber),
                             "an NCCL topology XML")
        element = self.builder.start(tag, attrs)
        self.lines[id(element)] = self.parser.CurrentLineNumber

    def end(self, tag: str) -> None:
        self.depth -= 1
        self.builder.end(tag)

    def refuse(self, *_: object) -> None:
        raise ParseError("DOCTYPE/entities are not allowed",
                         Location(self.source, self.parser.CurrentLineNumber))


def _read_tree(text: str, source: str) -> tuple[ET.Element, dict[int, int]]:
    """Parse well-formed XML into a tree plus a map from element id to its line."""
    reader = _TreeReader(source)
    try:
        reader.parser.Parse(text, True)
    except expat.ExpatError as exc:
        message = expat.ErrorString(exc.code) or "not well-formed"
        raise ParseError(f"malformed XML: {message} (column {exc.offset + 1})",
                         Location(source, exc.lineno), "well-formed XML") from exc
    return reader.builder.close(), reader.lines


# --- walking the tree -------------------------------------------------------------------


@dataclass(frozen=True)
class _Pci:
    """A ``pci`` element as its children need it."""

    busid: str
    pci_class: str | None
    numa: int | None
    path: tuple[str, ...]
    link_speed: str | None
    link_width: int | None


@dataclass
class _Walker:
    """Walks a parsed ``system`` tree and collects cpus, GPUs and nets."""

    source: str
    lines: dict[int, int]
    cpus: list[NcclCpu] = field(default_factory=list)
    gpus: list[NcclGpu] = field(default_factory=list)
    nets: list[NcclNet] = field(default_factory=list)
    pci_classes: dict[str, str] = field(default_factory=dict)
    pci_lines: dict[str, int] = field(default_factory=dict)

    def result(self) -> NcclTopology:
        """The collected topology, GPUs and nets sorted by dev then busid/name."""
        gpus = sorted(self.gpus, key=lambda g: (g.dev is None, g.dev or 0, g.busid))
        nets = sorted(self.nets, key=lambda n: (n.dev is None, n.dev or 0, n.name))
        return NcclTopology(source=self.source, cpus=self.cpus, gpus=gpus, nets=nets,
                            pci_classes=self.pci_classes)

    def system(self, root: ET.Element) -> None:
        """Children of ``system``: cpus, and (leniently) cpu-less pci and nic entries."""
        for child, path in _children(root, "system"):
            self._device_child(child, path, None, numa=None)
            if child.tag == "cpu":
                self.cpu(child, path)

    def cpu(self, element: ET.Element, path: str) -> None:
        """A NUMA node: record it and walk the pci and nic entries under it."""
        numa = self._int(element, path, "numaid")
        numa = None if numa is None or numa < 0 else numa
        self.cpus.append(NcclCpu(numaid=numa, affinity=element.get("affinity"),
                                 arch=element.get("arch"), vendor=element.get("vendor")))
        for child, child_path in _children(element, path):
            self._device_child(child, child_path, None, numa=numa)

    def pci(self, element: ET.Element, path: str, parent: _Pci | None, numa: int | None) -> None:
        """A PCI bridge or device; bare GPU/NIC entries become GPUs/nets of their own."""
        pci = self._pci_info(element, path, parent, numa)
        found_gpu = found_net = False
        for child, child_path in _children(element, path):
            if child.tag == "gpu":
                if found_gpu:
                    raise ParseError("a pci holds more than one gpu", self._at(child, child_path))
                self.gpus.append(self._gpu(child, child_path, pci))
                found_gpu = True
            else:
                found_net |= self._device_child(child, child_path, pci, numa=numa)
        if not found_gpu and _is_gpu_class(pci.pci_class):
            self.gpus.append(NcclGpu(busid=pci.busid, numa=numa, pci_path=list(pci.path),
                                     link_speed=pci.link_speed, link_width=pci.link_width))
        if not found_net and (pci.pci_class or "").startswith("0x02"):
            self.nets.append(NcclNet(name=pci.busid, busid=pci.busid, numa=numa,
                                     pci_path=list(pci.path)))

    def _device_child(self, child: ET.Element, path: str, pci: _Pci | None,
                      numa: int | None) -> bool:
        """Dispatch a pci, nic or misplaced gpu child; True when it yielded a net."""
        if child.tag == "pci":
            self.pci(child, path, pci, numa)
        elif child.tag == "nic":
            return self.nic(child, path, pci, numa)
        elif child.tag == "gpu":
            raise _outside_pci(self._at(child, path))
        return False

    def nic(self, element: ET.Element, path: str, pci: _Pci | None, numa: int | None) -> bool:
        """The nets of one ``nic``; True when there was at least one."""
        found = False
        for child, child_path in _children(element, path):
            if child.tag == "net":
                self.nets.append(self._net(child, child_path, pci, numa))
                found = True
            elif child.tag == "gpu":
                raise _outside_pci(self._at(child, child_path))
        return found

    def _pci_info(self, element: ET.Element, path: str, parent: _Pci | None,
                  numa: int | None) -> _Pci:
        busid = self._to_busid(element, path, "busid", self._need(element, path, "busid"))
        if busid in self.pci_lines:
            raise ParseError(f"busid {busid} appears twice (first on line "
                             f"{self.pci_lines[busid]})", self._at(element, path))
        self.pci_lines[busid] = self.lines[id(element)]
        raw_class = element.get("class")
        pci_class = None if raw_class is None else self._to_class(element, path, "class",
                                                                  raw_class)
        if pci_class is not None:
            self.pci_classes[busid] = pci_class
        enclosing = (*parent.path, parent.busid) if parent else ()
        return _Pci(busid=busid, pci_class=pci_class, numa=numa, path=enclosing,
                    link_speed=element.get("link_speed"),
                    link_width=self._int(element, path, "link_width", minimum=0))

    def _gpu(self, element: ET.Element, path: str, pci: _Pci) -> NcclGpu:
        nvlinks = [self._nvlink(child, child_path)
                   for child, child_path in _children(element, path) if child.tag == "nvlink"]
        return NcclGpu(busid=pci.busid, dev=self._int(element, path, "dev"),
                       rank=self._int(element, path, "rank"), sm=self._int(element, path, "sm"),
                       gdr=self._bool(element, path, "gdr"), numa=pci.numa,
                       pci_path=list(pci.path), link_speed=pci.link_speed,
                       link_width=pci.link_width, nvlinks=nvlinks)

    def _nvlink(self, element: ET.Element, path: str) -> NcclNvlink:
        target = self._to_busid(element, path, "target", self._need(element, path, "target"))
        count = self._to_int(element, path, "count", self._need(element, path, "count"), 0)
        tclass = self._to_class(element, path, "tclass", self._need(element, path, "tclass"))
        return NcclNvlink(target=target, count=count, tclass=tclass,
                          to_nvswitch=tclass == NVSWITCH_CLASS, to_gpu=tclass in GPU_LINK_CLASSES)

    def _net(self, element: ET.Element, path: str, pci: _Pci | None,
             numa: int | None) -> NcclNet:
        name = element.get("name", "").strip()
        if not name:
            raise ParseError("net has no name attribute", self._at(element, path),
                             'a device name like name="mlx5_0"')
        return NcclNet(name=name, dev=self._int(element, path, "dev"),
                       speed_mbps=self._int(element, path, "speed"),
                       port=self._int(element, path, "port"),
                       latency=self._float(element, path, "latency"),
                       gdr=self._bool(element, path, "gdr"), guid=element.get("guid"),
                       busid=pci.busid if pci else None, numa=numa,
                       pci_path=[*pci.path] if pci else [])

    # --- attributes ---------------------------------------------------------------------

    def _at(self, element: ET.Element, path: str) -> Location:
        return Location(self.source, self.lines.get(id(element)), path)

    def _need(self, element: ET.Element, path: str, name: str) -> str:
        value = element.get(name)
        if value is None:
            raise ParseError(f"missing attribute {name}", self._at(element, path),
                             f"a {name} attribute")
        return value

    def _int(self, element: ET.Element, path: str, name: str,
             minimum: int | None = None) -> int | None:
        value = element.get(name)
        return None if value is None else self._to_int(element, path, name, value, minimum)

    def _to_int(self, element: ET.Element, path: str, name: str, value: str,
                minimum: int | None = None) -> int:
        if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            raise ParseError(f"attribute {name}=\"{_shown(value)}\" is not a number",
                             self._at(element, path), "an integer")
        digits = len(value.strip().lstrip("+-"))
        if digits > MAX_INT_DIGITS:  # int() itself refuses past 4,300 digits
            raise ParseError(f"attribute {name} is a {digits}-digit number",
                             self._at(element, path),
                             f"an integer of at most {MAX_INT_DIGITS} digits")
        number = int(value)
        if minimum is not None and number < minimum:
            raise ParseError(f"attribute {name}=\"{_shown(value)}\" is below {minimum}",
                             self._at(element, path), f"an integer >= {minimum}")
        return number

    def _float(self, element: ET.Element, path: str, name: str) -> float | None:
        value = element.get(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ParseError(f"attribute {name}=\"{_shown(value)}\" is not a number",
                             self._at(element, path), "a decimal number")
        return number

    def _bool(self, element: ET.Element, path: str, name: str) -> bool | None:
        value = element.get(name)
        if value is None:
            return None
        if value.strip() not in ("0", "1"):
            raise ParseError(f"attribute {name}=\"{_shown(value)}\" is not 0 or 1",
                             self._at(element, path), "0 or 1")
        return value.strip() == "1"

    def _to_busid(self, element: ET.Element, path: str, name: str, value: str) -> str:
        busid = _normalise_busid(value)
        if busid is None:
            raise ParseError(f"attribute {name}=\"{_shown(value)}\" is not a PCI address",
                             self._at(element, path), _BUSID_HINT)
        return busid

    def _to_class(self, element: ET.Element, path: str, name: str, value: str) -> str:
        found = _PCI_CLASS.fullmatch(value.strip().lower())
        if found is None:
            raise ParseError(f"attribute {name}=\"{_shown(value)}\" is not a PCI class",
                             self._at(element, path), "a hex class like 0x030200")
        # A 16-bit class (base + subclass) written without the programming interface.
        return "0x" + found.group(1).ljust(6, "0")


# --- small helpers ----------------------------------------------------------------------


def _children(element: ET.Element, path: str) -> Iterator[tuple[ET.Element, str]]:
    """Children with their paths; a tag repeated among siblings gets an index (pci[1])."""
    counts = Counter(child.tag for child in element)
    seen: Counter[str] = Counter()
    for child in element:
        tag = child.tag
        step = f"{tag}[{seen[tag]}]" if counts[tag] > 1 else tag
        seen[tag] += 1
        yield child, f"{path}/{step}"


def _normalise_busid(value: str) -> str | None:
    """Lower-case, full-domain busid (``0000:18:00.0``); None when not a PCI address.

    Domains that fit 16 bits get four digits (nvidia-smi writes eight); wider ones, such
    as NCCL's NVSwitch placeholder ``fffffff:ff:ff.0``, are kept as written.
    """
    found = _BUSID.fullmatch(value.strip().lower())
    if found is None:
        return None
    domain, bus, device, function = found.groups()
    domain_value = int(domain or "0", 16)
    domain_text = f"{domain_value:04x}" if domain_value <= 0xFFFF else domain
    return f"{domain_text}:{int(bus, 16):02x}:{int(device, 16):02x}.{function}"


def _outside_pci(location: Location) -> ParseError:
    return ParseError("gpu element outside a pci", location, "gpu inside a pci element")


def _is_gpu_class(pci_class: str | None) -> bool:
    return pci_class is not None and pci_class.startswith(("0x0302", "0x0300"))


def _switch_links(gpu: NcclGpu) -> int:
    return sum(link.count for link in gpu.nvlinks if link.to_nvswitch)


def _peer_links(gpu: NcclGpu, peer_busid: str) -> int:
    return sum(link.count for link in gpu.nvlinks if link.to_gpu and link.target == peer_busid)


def _closeness(gpu: NcclGpu, net: NcclNet) -> tuple[int, bool]:
    """(depth of the deepest common PCIe ancestor, same CPU) — larger is closer."""
    if gpu.numa is not None and net.numa is not None and gpu.numa != net.numa:
        return (0, False)
    depth = 0
    for mine, theirs in zip(gpu.pci_path, net.pci_path, strict=False):
        if mine != theirs:
            break
        depth += 1
    return (depth, gpu.numa is not None and gpu.numa == net.numa)


def _busids(gpus: list[NcclGpu]) -> str:
    return ", ".join(gpu.busid for gpu in gpus) or "no GPUs"


def _shown(value: str, limit: int = 40) -> str:
    """An attribute value short enough for an error message (hostile files have MBs)."""
    return value if len(value) <= limit else value[:limit] + "…"
