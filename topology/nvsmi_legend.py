"""What surrounds an ``nvidia-smi topo -m`` matrix: legends, command line, other outputs.

The code legend tells ``topo -m`` from ``topo -mp`` when no NVLink cell does, the NIC
legend names the RDMA device of each NIC column, and a pasted command line settles
the mode outright. Other nvidia-smi outputs (``nvlink -s``, the status table, ``-q``,
``-L``) are named so that the parser can refuse them precisely. Part of
:mod:`topology.nvsmi`, which is the public entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from topology.nvsmi_affinity import MAX_LINE_CHARS, is_uint

_NIC_KEY = re.compile(r"(NIC\d{1,4}):(.*)")
#: How far above the matrix to look for its command line.
_COMMAND_WINDOW = 10


@dataclass(frozen=True)
class Legends:
    """What the legends after the matrix say: the codes listed, the NIC names, and
    whether the code legend is known to be whole (a NIC legend follows it)."""

    codes: frozenset[str] | None
    nic_devices: dict[str, str]
    codes_complete: bool = False


def _tokens(lines: Sequence[str], start: int, stop: int) -> Iterator[str]:
    for index in range(start, stop):
        if len(lines[index]) <= MAX_LINE_CHARS:
            yield from lines[index].split()


def read_legends(lines: Sequence[str], end: int, stop: int) -> Legends:
    """Read the code legend and the NIC legend in ``lines[end:stop]``, after a matrix.

    Works on the token stream, so hard-wrapped legends read the same; stops at
    ``stop`` (the caller's window or the next matrix) or at a second legend of either
    kind, which belongs to another output.
    """
    codes: set[str] | None = None
    nic: dict[str, str] = {}
    mode, previous, pending, nic_seen, complete = "", "", "", False, False
    for token in _tokens(lines, end, stop):
        if token == "Legend:":
            if (nic_seen if previous == "NIC" else codes is not None):
                break
            complete = complete or (previous == "NIC" and codes is not None)
            mode = "nic" if previous == "NIC" else "codes"
            nic_seen = nic_seen or mode == "nic"
            codes = set() if codes is None and mode == "codes" else codes
        elif mode == "codes" and token == "=" and codes is not None:
            codes.add(previous)
        elif mode == "nic":
            mode, pending = _nic_token(token, pending, nic)
        previous = token
    return Legends(frozenset(codes) if codes is not None else None, nic, complete)


def _nic_token(token: str, pending: str, nic: dict[str, str]) -> tuple[str, str]:
    """Advance the NIC legend reader (``NIC0: mlx5_0`` pairs) by one token."""
    if pending:
        nic.setdefault(pending, token)
        return "nic", ""
    match = _NIC_KEY.fullmatch(token)
    if match is None:
        return "", ""
    if match.group(2):
        nic.setdefault(match.group(1), match.group(2))
        return "nic", ""
    return "nic", match.group(1)


def command_mode(lines: Sequence[str], start: int) -> str | None:
    """Read the ``nvidia-smi topo`` command line just above the matrix, if pasted.

    Returns ``"m"``, ``"mp"``, ``"other"`` (another ``topo`` flag) or None.
    """
    for index in range(start - 1, max(-1, start - 1 - _COMMAND_WINDOW), -1):
        tokens = lines[index].split() if len(lines[index]) <= MAX_LINE_CHARS else []
        if "topo" not in tokens or not any("nvidia-smi" in t for t in tokens):
            continue
        flags = tokens[tokens.index("topo") + 1:]
        if any(flag in ("-mp", "--matrix_pci") for flag in flags):
            return "mp"
        if any(flag in ("-m", "--matrix") for flag in flags):
            return "m"
        return "other"
    return None


def is_pcie_only(has_nvlink: bool, command: str | None, legends: Legends) -> bool:
    """Decide whether the matrix is ``topo -mp`` output.

    NV cells settle it; then the pasted command line; then the legend, which lists
    ``NV#`` (last) under ``-m`` but not under ``-mp`` — evidence only when the legend is
    known to be whole (the NIC legend follows it): a capture cut just before the NV#
    line reads exactly like ``-mp``, so a legend without an end proves nothing. Legends
    without NODE come from old drivers, whose ``-m`` legend may lack NV# too, so they
    are not taken as evidence either.
    """
    if has_nvlink:
        return False
    if command in ("m", "mp"):
        return command == "mp"
    codes = legends.codes
    return (legends.codes_complete and codes is not None and {"PIX", "NODE"} <= codes
            and "NV#" not in codes)


def identify_other(lines: Sequence[str]) -> tuple[str, int] | None:
    """Name another nvidia-smi output in ``lines`` and its first line, if any."""
    gpu_line = link_line = status_line = query_line = None
    for number, text in enumerate(lines, start=1):
        if len(text) > MAX_LINE_CHARS:
            continue
        if status_line is None and "NVIDIA-SMI" in text and "Driver Version" in text:
            status_line = number
        if query_line is None and "NVSMI LOG" in text:
            query_line = number
        tokens = text.split(None, 2)[:2]
        if len(tokens) < 2:
            continue
        if gpu_line is None and tokens[0] == "GPU" and is_uint(tokens[1].rstrip(":")) \
                and tokens[1].endswith(":"):
            gpu_line = number
        if link_line is None and tokens[0] == "Link" and is_uint(tokens[1][:-1]) \
                and tokens[1][-1:] in (":", ","):
            link_line = number
    if gpu_line is not None and link_line is not None:
        return "`nvidia-smi nvlink` output", gpu_line
    if status_line is not None:
        return "the `nvidia-smi` status table", status_line
    if query_line is not None:
        return "the `nvidia-smi -q` report", query_line
    if gpu_line is not None:
        return "`nvidia-smi -L` output", gpu_line
    return None
