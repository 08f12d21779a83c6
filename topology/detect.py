"""Detecting which topology format a capture is in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from topology.errors import Location, ParseError
from topology.source import strip_bom

Format = Literal["nvidia-smi", "lldp", "nccl-xml", "inventory", "k8s-nodes",
                 "ibnetdiscover", "iblinkinfo", "rdma-devices", "aws-topology"]
FORMATS: tuple[Format, ...] = ("nvidia-smi", "lldp", "nccl-xml", "inventory", "k8s-nodes",
                               "ibnetdiscover", "iblinkinfo", "rdma-devices",
                               "aws-topology")


def _sniffers() -> list[tuple[Format, Callable[[str], bool]]]:
    from topology.aws_topology import looks_like_aws_topology
    from topology.iblinkinfo import looks_like_iblinkinfo
    from topology.ibnetdiscover import looks_like_ibnetdiscover
    from topology.k8s import looks_like_k8s_nodes
    from topology.lldp import looks_like_lldp
    from topology.nccl import looks_like_nccl_xml
    from topology.nvsmi import looks_like_nvidia_smi
    from topology.rdma_devices import looks_like_rdma_devices

    return [("nccl-xml", looks_like_nccl_xml), ("k8s-nodes", looks_like_k8s_nodes),
            ("aws-topology", looks_like_aws_topology), ("lldp", looks_like_lldp),
            ("ibnetdiscover", looks_like_ibnetdiscover), ("iblinkinfo", looks_like_iblinkinfo),
            ("rdma-devices", looks_like_rdma_devices), ("nvidia-smi", looks_like_nvidia_smi),
            ("inventory", looks_like_inventory)]


def looks_like_inventory(text: str) -> bool:
    """An inventory is YAML with a top-level ``zones:`` key."""
    return any(line.startswith("zones:") for line in text.splitlines()[:400])


def detect_format(text: str, source: str) -> Format:
    """The format of a capture, or a ParseError listing what is accepted."""
    text = strip_bom(text)
    for name, sniff in _sniffers():
        if sniff(text):
            return name
    raise ParseError("cannot tell the format of this file", Location(source),
                     f"one of {', '.join(FORMATS)} (or pass --format)")
