"""Builders for simulator tests: a small cluster, small traces and one-call runs."""

from __future__ import annotations

import zlib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from sim.metrics import Summary
from sim.scenarios import cluster
from sim.simulator import SimConfig, simulate
from sim.workloads import AgenticParams, SimRequest, Trace, agentic
from topology.distance import DistanceModel
from topology.spec import FabricSpec
from topology.synth import synth_cluster

FIXTURES = Path(__file__).parent / "fixtures"


@lru_cache(maxsize=1)
def small_fabric() -> tuple[FabricSpec, DistanceModel]:
    """The ``small`` scenario: 2 zones x 2 racks x 1 HGX H100 host (8 TP4 instances)."""
    fabric = cluster("small").fabric()
    return fabric, DistanceModel(fabric)


@lru_cache(maxsize=1)
def thin_fabric() -> tuple[FabricSpec, DistanceModel]:
    """The small cluster with a 16:1 zone uplink: cross-zone KV transfers congest."""
    params = replace(cluster("small").params, zone_oversubscription=16.0, name="thin")
    fabric = synth_cluster(params)
    return fabric, DistanceModel(fabric)


def small_trace(*, sessions: int = 30, seed: int = 0, **overrides: Any) -> Trace:
    """An agentic trace of ``sessions`` x 6 turns (a few hundred requests at most)."""
    params: dict[str, Any] = {"sessions": sessions, "session_rate": 3.0, "system_tokens": 4096,
              "turn_tokens": 768, "output_tokens": 96, "think_s": 0.5}
    params.update(overrides)
    return agentic(AgenticParams(**params), seed)


def request(*, rid: str = "r0", arrival_s: float = 0.0, prompt_tokens: int = 1024,
            output_tokens: int = 16, blocks: tuple[int, ...] | None = None,
            block_tokens: int = 512) -> SimRequest:
    """One request; block ids default to a chain unique to ``rid``."""
    count = -(-prompt_tokens // block_tokens)
    base = 10_000 + zlib.crc32(rid.encode()) % 10_000 * 100
    chain = blocks if blocks is not None else tuple(range(base, base + count))
    return SimRequest(rid, arrival_s, prompt_tokens, output_tokens, chain)


def run(trace: Trace, *, thin: bool = False, **config: Any) -> Summary:
    """Simulate ``trace`` on the small (or thin) cluster: 5 prefill + 3 decode TP4 instances."""
    fabric, distance = thin_fabric() if thin else small_fabric()
    settings: dict[str, Any] = {"prefill": 5, "decode": 3, "tp": 4}
    settings.update(config)
    return simulate(fabric, trace, SimConfig(**settings), distance=distance)
