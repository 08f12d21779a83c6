"""Topology tiers and the per-edge link figures of the cost model (``config/links.yaml``)."""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from topology.documents import load_document, packaged_config


class Tier(IntEnum):
    """How far apart two GPUs are, nearest first. Values are stable wire codes."""

    SAME_GPU = 0
    NVLINK = 1
    PCIE_SWITCH = 2
    HOST_BRIDGE = 3
    CROSS_SOCKET = 4
    SAME_LEAF = 5
    SAME_POD = 6
    SAME_ZONE = 7
    CROSS_ZONE = 8

    @property
    def label(self) -> str:
        """snake_case name used on the wire and in metrics."""
        return self.name.lower()

    @property
    def same_host(self) -> bool:
        """True for tiers that never leave the host (or its NVLink domain)."""
        return self <= Tier.CROSS_SOCKET

    @classmethod
    def from_label(cls, label: str) -> Tier:
        """Parse a snake_case tier label."""
        return cls[label.upper()]


EdgeKind = Literal["nvlink", "pcie", "host_bridge", "socket", "nic_leaf", "leaf_agg",
                   "agg_spine", "zone_link"]


class EdgeFigures(BaseModel):
    """Default one-way latency and bandwidth of one kind of edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_us: float = Field(ge=0)
    bandwidth_gb_per_s: float = Field(gt=0)


class EdgeTable(BaseModel):
    """Figures for every edge kind of the fabric graph."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nvlink: EdgeFigures
    pcie: EdgeFigures
    host_bridge: EdgeFigures
    socket: EdgeFigures
    nic_leaf: EdgeFigures
    leaf_agg: EdgeFigures
    agg_spine: EdgeFigures
    zone_link: EdgeFigures

    def of(self, kind: EdgeKind) -> EdgeFigures:
        """Figures of one edge kind."""
        figures: EdgeFigures = getattr(self, kind)
        return figures


class LinkConfig(BaseModel):
    """The link document: per-edge figures and cost-model settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    edges: EdgeTable
    same_gpu: EdgeFigures
    nvlink_across_processes: bool = True


def load_links(path: str | Path | None = None) -> LinkConfig:
    """Load a link document; ``None`` loads the packaged default."""
    return load_document(LinkConfig, path or packaged_config("links.yaml"))
