"""A readable summary of a fabric: counts per level, rails, NVLink domains."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, ConfigDict

from topology.spec import FabricSpec


class RailSummary(BaseModel):
    """One pod's rails: rail index → leaf name."""

    model_config = ConfigDict(frozen=True)

    pod: str
    leaves_by_rail: dict[int, str]


class FabricSummary(BaseModel):
    """Counts and structure of a fabric, for people and for ``--json``."""

    model_config = ConfigDict(frozen=True)

    name: str
    zones: int
    pods: int
    leaves: int
    racks: int
    hosts: int
    gpus: int
    nics: int
    gpu_types: dict[str, int]
    rail_optimised: bool
    rails: list[RailSummary]
    nvlink_domains: dict[str, int]
    warnings: list[str]
    conflicts: list[str]


def summarize(spec: FabricSpec) -> FabricSummary:
    """Summarise a fabric."""
    gpu_types: Counter[str] = Counter()
    for host in spec.hosts:
        gpu_types[host.gpu_type] += len(host.gpus)
    rails: dict[str, dict[int, str]] = {}
    for leaf in spec.leaves:
        if leaf.rail is not None:
            rails.setdefault(leaf.pod, {})[leaf.rail] = leaf.name
    return FabricSummary(
        name=spec.name, zones=len(spec.zones), pods=len(spec.pods), leaves=len(spec.leaves),
        racks=len(spec.racks), hosts=len(spec.hosts), gpus=sum(gpu_types.values()),
        nics=sum(len(h.nics) for h in spec.hosts), gpu_types=dict(gpu_types),
        rail_optimised=bool(rails),
        rails=[RailSummary(pod=p, leaves_by_rail=dict(sorted(r.items())))
               for p, r in rails.items()],
        nvlink_domains={d.name: len(d.hosts) for d in spec.nvlink_domains},
        warnings=list(spec.warnings), conflicts=list(spec.conflicts))


def render_text(summary: FabricSummary) -> str:
    """The summary as a few readable lines."""
    s = summary
    lines = [
        f"fabric {s.name}",
        f"  zones {s.zones} | pods {s.pods} | leaves {s.leaves} | racks {s.racks} | "
        f"hosts {s.hosts} | GPUs {s.gpus} | NICs {s.nics}",
        "  GPU types: " + ", ".join(f"{n}x {t}" for t, n in s.gpu_types.items()),
        f"  rail-optimised: {'yes' if s.rail_optimised else 'no'}"
        + (f" ({len(s.rails)} pods, {len(s.rails[0].leaves_by_rail)} rails each)"
           if s.rails else ""),
        f"  NVLink domains spanning hosts: {len(s.nvlink_domains)}"
        + (" (" + ", ".join(f"{d}: {n} hosts" for d, n in list(s.nvlink_domains.items())[:4])
           + ")" if s.nvlink_domains else ""),
    ]
    lines += [f"  warning: {w}" for w in s.warnings[:20]]
    lines += [f"  CONFLICT: {c}" for c in s.conflicts]
    return "\n".join(lines)
