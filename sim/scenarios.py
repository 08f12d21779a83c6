"""Named clusters and workloads, so runs are reproducible from a short name.

A workload is named ``NAME[:key=value,...]``: ``mooncake-conversation:scale=10,limit=2000``
replays the first 2,000 requests of the Mooncake conversation trace ten times faster.
Keys: ``scale`` (arrival-rate multiplier), ``limit`` (first N requests), ``unshared``
(``1``: every block id made unique, no prefix reuse), ``arrivals`` (``spread``, the
default: a quantised trace's requests are spread over their timestamp bucket;
``raw``: replayed at the trace's own timestamps), and for the agentic generator
``sessions``, ``system_tokens``, ``turn_tokens`` and ``output_tokens``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sim.workloads import AgenticParams, Trace, agentic, load_azure, load_mooncake, without_sharing
from topology.errors import InputError, NotFoundError
from topology.spec import FabricSpec
from topology.synth import SynthParams, synth_cluster


def default_trace_dir() -> Path:
    """Where the public traces live: ``TOPOSCHED_TRACES``, else ``shared/data/traces``
    beside the checkout (how CI and developer machines lay it out)."""
    if "TOPOSCHED_TRACES" in os.environ:
        return Path(os.environ["TOPOSCHED_TRACES"])
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"


TRACE_DIR = default_trace_dir()


@dataclass(frozen=True)
class ClusterScenario:
    """A synthetic fabric and the prefill/decode split of its TP instances."""

    name: str
    description: str
    params: SynthParams
    tp: int
    prefill: int
    decode: int

    def fabric(self) -> FabricSpec:
        """Build the fabric."""
        return synth_cluster(self.params)


def _three_level(name: str, *, zone_over: float, leaf_over: float, description: str,
                 hosts_per_rack: int = 4, prefill: int = 40, decode: int = 24) -> ClusterScenario:
    params = SynthParams(zones=2, pods_per_zone=2, racks_per_pod=2, hosts_per_rack=hosts_per_rack,
                         rails=False, leaf_oversubscription=leaf_over, pod_oversubscription=2.0,
                         zone_oversubscription=zone_over, name=name)
    return ClusterScenario(name, description, params, 4, prefill, decode)


CLUSTERS: dict[str, ClusterScenario] = {
    "small": ClusterScenario(
        "small", "2 zones x 2 racks x 1 HGX H100 host: 8 TP4 instances (tests)",
        SynthParams(zones=2, pods_per_zone=1, racks_per_pod=2, hosts_per_rack=1, rails=False,
                    leaf_oversubscription=2.0, name="small"), 4, 5, 3),
    "three-level": _three_level(
        "three-level", zone_over=4.0, leaf_over=4.0,
        description="2 zones x 2 pods x 2 racks x 4 HGX H100 hosts (256 GPUs, 64 TP4 "
                    "instances); ToR per rack, uplinks oversubscribed 4:1 rack, 2:1 pod, "
                    "4:1 zone"),
    "three-level-thin": _three_level(
        "three-level-thin", zone_over=32.0, leaf_over=8.0,
        description="as three-level with thin uplinks: 8:1 rack, 2:1 pod, 32:1 zone "
                    "(12.5 GB/s between the zones)"),
}


def cluster(name: str) -> ClusterScenario:
    """A named cluster scenario."""
    found = CLUSTERS.get(name)
    if found is None:
        raise NotFoundError("cluster scenario", name, f"known: {', '.join(sorted(CLUSTERS))}")
    return found


def _mooncake(file: str) -> Callable[[dict[str, str], int], Trace]:
    def load(opts: dict[str, str], seed: int) -> Trace:
        return load_mooncake(TRACE_DIR / "mooncake" / file, seed=seed,
                             limit=_int(opts, "limit"), spread=opts.get("arrivals") != "raw")
    return load


def _azure(file: str) -> Callable[[dict[str, str], int], Trace]:
    def load(opts: dict[str, str], seed: int) -> Trace:
        return load_azure(TRACE_DIR / "azure2023" / file, limit=_int(opts, "limit"))
    return load


def _agentic(opts: dict[str, str], seed: int) -> Trace:
    shape = {key: value for key in ("sessions", "system_tokens", "turn_tokens", "output_tokens")
             if (value := _int(opts, key)) is not None}
    return agentic(AgenticParams(**{"sessions": 400, **shape}), seed)


WORKLOADS: dict[str, Callable[[dict[str, str], int], Trace]] = {
    "mooncake-conversation": _mooncake("conversation_trace.jsonl"),
    "mooncake-synthetic": _mooncake("synthetic_trace.jsonl"),
    "azure-code": _azure("AzureLLMInferenceTrace_code.csv"),
    "azure-conv": _azure("AzureLLMInferenceTrace_conv.csv"),
    "agentic": _agentic,
}

_KEYS = ("scale", "limit", "unshared", "arrivals", "sessions", "system_tokens", "turn_tokens",
         "output_tokens")


def workload(spec: str, seed: int = 0) -> Trace:
    """The trace a workload spec names (see the module docstring)."""
    name, _, rest = spec.partition(":")
    opts = _options(rest, spec)
    build = WORKLOADS.get(name)
    if build is None:
        raise NotFoundError("workload", name, f"known: {', '.join(sorted(WORKLOADS))}")
    trace = build(opts, seed)
    if "limit" in opts:
        trace = trace.head(_int(opts, "limit") or len(trace.requests))
    if opts.get("unshared") == "1":
        trace = without_sharing(trace)
    scale = float(opts.get("scale", "1"))
    return trace if scale == 1 else trace.scaled(scale)


def _options(text: str, spec: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, eq, value = part.partition("=")
        if not eq or key not in _KEYS:
            raise InputError(f"workload {spec!r}: bad option {part!r} "
                             f"(expected key=value with key in {', '.join(_KEYS)})")
        opts[key] = value
    if opts.get("arrivals", "spread") not in ("spread", "raw"):
        raise InputError(f"workload {spec!r}: arrivals must be spread or raw")
    if "scale" in opts:
        try:
            if float(opts["scale"]) <= 0:
                raise ValueError(opts["scale"])
        except ValueError as exc:
            raise InputError(f"workload {spec!r}: scale must be a positive number") from exc
    return opts


def _int(opts: dict[str, str], key: str) -> int | None:
    if key not in opts:
        return None
    try:
        value = int(opts[key])
    except ValueError as exc:
        raise InputError(f"workload option {key} must be an integer, got {opts[key]!r}") from exc
    if value < 1:
        raise InputError(f"workload option {key} must be at least 1, got {value}")
    return value
