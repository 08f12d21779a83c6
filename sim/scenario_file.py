"""Scenario files: one versioned YAML document fixes everything a simulation depends on.

A scenario names the cluster (a packaged one, a synthetic shape or a fabric file, with
per-edge overrides and slower NICs on some racks), the instances (prefill / decode
counts, TP, aggregated or not), the engine (:class:`~sim.timing.EngineSpec`: step
curves, ``max_num_batched_tokens``, KV blocks, eviction order), the workload and how
its arrivals are replayed (``raw`` timestamps or quantised buckets ``spread``), the
SLOs, whether KV transfers use the fabric or are instantaneous, whether the router
counts a routed prompt as held by its prefill worker before the engine reports it
(``router.prefill_ttl_s``), the placement and the policies to compare. Errors name
the file, the field path and the rule::

    scenario.yaml: engine.kv_blocks: must be greater than or equal to 1

Packaged scenarios live in ``config/scenarios/``; :func:`load_scenario` takes a path
or a packaged name.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim.adapters import PlacementMethod
from sim.metrics import Slo
from sim.scenarios import cluster as named_cluster
from sim.simulator import SimConfig
from sim.timing import EngineSpec
from topology.documents import load_document, packaged_config
from topology.errors import NotFoundError
from topology.spec import FabricSpec, load_fabric
from topology.synth import SynthParams, synth_cluster
from topology.tiers import EdgeFigures, load_links

_STRICT = ConfigDict(frozen=True, extra="forbid")
_SYNTH_KEYS = {f.name for f in fields(SynthParams)}


class SlowRacks(BaseModel):
    """Every ``every``-th rack (the first of each group) has NICs of ``nic_gbit``."""

    model_config = _STRICT
    every: int = Field(default=2, ge=1)
    nic_gbit: float = Field(gt=0)


class ClusterSection(BaseModel):
    """Where the fabric comes from (exactly one of ``name``, ``synth``, ``fabric_file``)."""

    model_config = _STRICT
    name: str | None = None
    synth: dict[str, Any] | None = None
    fabric_file: str | None = None
    edges: dict[Literal["nvlink", "pcie", "host_bridge", "socket", "nic_leaf", "leaf_agg",
                        "agg_spine", "zone_link"], EdgeFigures] = Field(default_factory=dict)
    slow_racks: SlowRacks | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ClusterSection:
        given = [k for k in ("name", "synth", "fabric_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of name, synth, fabric_file")
        unknown = sorted(set(self.synth or {}) - _SYNTH_KEYS)
        if unknown:
            raise ValueError(f"synth: unknown key {unknown[0]!r} "
                             f"(known: {', '.join(sorted(_SYNTH_KEYS))})")
        return self


class InstancesSection(BaseModel):
    """How many instances of how many GPUs, and whether each serves both phases."""

    model_config = _STRICT
    prefill: int = Field(ge=0)
    decode: int = Field(ge=1)
    tp: int = Field(default=4, ge=1)
    aggregated: bool = False


class RouterSection(BaseModel):
    """How the router reads prefixes besides the engines' KV events."""

    model_config = _STRICT
    #: Count a routed prompt's blocks as held by the worker that will compute them for
    #: this many seconds (until its engine reports them), as Dynamo's approximate KV
    #: router, llm-d's approximate prefix scorer and SGLang's cache-aware router do.
    prefill_ttl_s: float | None = Field(default=None, gt=0)
    #: Prefix pull: a prefill worker may copy a cached prefix from the worker holding it
    #: over the fabric instead of recomputing it, where the router prices that cheaper
    #: (on by default; ``false`` turns it off).
    prefix_pull: bool = True


class Scenario(BaseModel):
    """A scenario document (version 1)."""

    model_config = _STRICT
    version: Literal[1]
    name: str = Field(min_length=1)
    description: str = ""
    #: A packaged model name (KV bytes per token, and the capacity model's curves for
    #: whatever the engine section leaves out).
    model: str = "llama-3-70b"
    cluster: ClusterSection
    instances: InstancesSection
    engine: EngineSpec = Field(default_factory=EngineSpec)
    workload: str = Field(min_length=1)
    arrivals: Literal["raw", "spread"] = "spread"
    slo: Slo = Field(default_factory=Slo)
    transfers: Literal["fabric", "infinite"] = "fabric"
    router: RouterSection = Field(default_factory=RouterSection)
    placement: PlacementMethod = "solver"
    policies: tuple[str, ...] = ("fabric-cost",)
    seed: int = Field(default=0, ge=0)

    def workload_spec(self) -> str:
        """The workload spec with the arrival handling applied."""
        joiner = "," if ":" in self.workload else ":"
        return f"{self.workload}{joiner}arrivals={self.arrivals}"

    def config(self, policy: str, *, placement: PlacementMethod | None = None,
               aggregated: bool | None = None, blind_fabric: bool = False,
               blind_prefix: bool = False, prefix_pull: bool | None = None) -> SimConfig:
        """One run of this scenario: ``policy`` with its placement and flags
        (``blind_fabric``, ``blind_prefix``, ``prefix_pull``); unset values come from the
        document."""
        inst = self.instances
        return SimConfig(policy=policy, placement=placement or self.placement, model=self.model,
                         tp=inst.tp, prefill=inst.prefill, decode=inst.decode,
                         aggregated=inst.aggregated if aggregated is None else aggregated,
                         infinite_fabric=self.transfers == "infinite", seed=self.seed,
                         slo=self.slo, engine=self.engine, blind_fabric=blind_fabric,
                         blind_prefix=blind_prefix,
                         prefill_ttl_s=self.router.prefill_ttl_s,
                         prefix_pull=(self.router.prefix_pull if prefix_pull is None
                                      else prefix_pull))

    def fabric(self, base: Path | None = None) -> FabricSpec:
        """Build the cluster's fabric (``fabric_file`` relative to ``base``)."""
        section = self.cluster
        if section.fabric_file is not None:
            path = Path(section.fabric_file)
            fabric = load_fabric(path if path.is_absolute() or base is None else base / path)
        elif section.name is not None:
            params = named_cluster(section.name).params
            fabric = synth_cluster(params, links=_links(section))
        else:
            params = SynthParams(**{"name": self.name, **(section.synth or {})})
            fabric = synth_cluster(params, links=_links(section))
        if section.edges and section.fabric_file is not None:
            fabric = fabric.model_copy(update={"links": _links(section, fabric)})
        if section.slow_racks is not None:
            fabric = _slow_racks(fabric, section.slow_racks)
        return fabric


def _links(section: ClusterSection, fabric: FabricSpec | None = None) -> Any:
    links = fabric.links if fabric is not None else load_links()
    if not section.edges:
        return links
    edges = links.edges.model_copy(update={str(k): v for k, v in section.edges.items()})
    return links.model_copy(update={"edges": edges})


def _slow_racks(fabric: FabricSpec, slow: SlowRacks) -> FabricSpec:
    racks = sorted({h.rack for h in fabric.hosts})
    chosen = set(racks[::slow.every])
    hosts = tuple(
        h.model_copy(update={"nics": tuple(n.model_copy(update={"gbit": slow.nic_gbit})
                                           for n in h.nics)}) if h.rack in chosen else h
        for h in fabric.hosts)
    return fabric.model_copy(update={"hosts": hosts})


SCENARIO_DIR = "scenarios"


def packaged_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``config/scenarios``."""
    folder = packaged_config(SCENARIO_DIR)
    return sorted(p.stem for p in folder.glob("*.yaml"))


def scenario_path(name_or_path: str) -> Path:
    """A scenario file: the path if it exists, else the packaged scenario of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = packaged_config(SCENARIO_DIR) / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    raise NotFoundError("scenario", name_or_path,
                        f"no such file; packaged: {', '.join(packaged_scenarios())}")


def load_scenario(name_or_path: str) -> Scenario:
    """Load and validate a scenario (path or packaged name); errors name field paths."""
    return load_document(Scenario, scenario_path(name_or_path))
