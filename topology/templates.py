"""Host templates (``config/hosts.yaml``): the shape of a GPU server without a capture."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from topology.documents import load_document, packaged_config
from topology.errors import NotFoundError
from topology.spec import GpuSpec, HostSpec, NicSpec


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PcieSwitchTemplate(_Strict):
    """A PCIe switch: its NUMA node and the local GPU / NIC indices behind it."""

    numa: int = Field(default=0, ge=0)
    gpus: tuple[int, ...] = ()
    nics: tuple[int, ...] = ()


class NvlinkTemplate(_Strict):
    """NVLink wiring: all pairs through an NVSwitch, or an explicit mesh."""

    switch: bool = False
    links_per_gpu: int = Field(default=18, gt=0)
    mesh: tuple[tuple[int, int, int], ...] = ()


class HostTemplate(_Strict):
    """The shape of one kind of GPU server."""

    gpu_type: str
    gpus: int = Field(gt=0, le=64)
    sockets: int = Field(default=1, ge=1)
    nics: int = Field(default=0, ge=0)
    nic_gbit: float = Field(default=400, gt=0)
    nvlink: NvlinkTemplate = NvlinkTemplate()
    pcie_switches: tuple[PcieSwitchTemplate, ...] = ()

    @model_validator(mode="after")
    def _indices_in_range(self) -> HostTemplate:
        for switch in self.pcie_switches:
            if any(g >= self.gpus for g in switch.gpus) or any(n >= self.nics
                                                               for n in switch.nics):
                raise ValueError("pcie_switches name a GPU or NIC index beyond gpus/nics")
        return self


class TemplateDocument(_Strict):
    """The host-template document."""

    version: Literal[1] = 1
    templates: dict[str, HostTemplate]


def load_templates(path: str | Path | None = None) -> dict[str, HostTemplate]:
    """Load host templates; ``None`` loads the packaged ``config/hosts.yaml``."""
    return dict(load_document(TemplateDocument, path or packaged_config("hosts.yaml")).templates)


def get_template(templates: dict[str, HostTemplate], name: str) -> HostTemplate:
    """A template by name, with the known names in the error."""
    if name not in templates:
        raise NotFoundError("host template", name, f"known: {', '.join(sorted(templates))}")
    return templates[name]


def host_from_template(template: HostTemplate, name: str, rack: str,
                       nic_leaves: tuple[str | None, ...] = ()) -> HostSpec:
    """Instantiate a template as a host; ``nic_leaves[i]`` is NIC i's leaf switch."""
    gpu_place = _placement(template, "gpus")
    nic_place = _placement(template, "nics")
    nics = tuple(NicSpec(device=f"mlx5_{i}", gbit=template.nic_gbit, numa=nic_place[i][0],
                         pcie_switch=nic_place[i][1],
                         leaf=nic_leaves[i] if i < len(nic_leaves) else None)
                 for i in range(template.nics))
    gpus = tuple(GpuSpec(index=i, numa=gpu_place[i][0], pcie_switch=gpu_place[i][1])
                 for i in range(template.gpus))
    return HostSpec(name=name, rack=rack, gpu_type=template.gpu_type, sockets=template.sockets,
                    gpus=gpus, nics=nics, gpu_links=gpu_link_matrix(template, gpus))


def _placement(template: HostTemplate, kind: Literal["gpus", "nics"]
               ) -> dict[int, tuple[int, str | None]]:
    count = template.gpus if kind == "gpus" else template.nics
    place: dict[int, tuple[int, str | None]] = {i: (0, None) for i in range(count)}
    for s, switch in enumerate(template.pcie_switches):
        for index in getattr(switch, kind):
            place[index] = (switch.numa, f"sw{s}")
    return place


def gpu_link_matrix(template: HostTemplate, gpus: tuple[GpuSpec, ...]
                    ) -> tuple[tuple[str, ...], ...]:
    """nvidia-smi style link codes between a template's GPUs."""
    mesh = {(a, b): n for a, b, n in template.nvlink.mesh} | \
           {(b, a): n for a, b, n in template.nvlink.mesh}
    rows = []
    for a in gpus:
        row = []
        for b in gpus:
            if a.index == b.index:
                row.append("X")
            elif template.nvlink.switch:
                row.append(f"NV{template.nvlink.links_per_gpu}")
            elif (a.index, b.index) in mesh:
                row.append(f"NV{mesh[a.index, b.index]}")
            else:
                row.append(pcie_code(a, b))
        rows.append(tuple(row))
    return tuple(rows)


def pcie_code(a: GpuSpec | NicSpec, b: GpuSpec | NicSpec) -> str:
    """The PCIe level nvidia-smi would print between two devices of known placement."""
    if a.pcie_switch is not None and a.pcie_switch == b.pcie_switch:
        return "PIX"
    return "NODE" if a.numa == b.numa else "SYS"
