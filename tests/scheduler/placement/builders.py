"""Builders for placement tests: workloads and requests with keyword defaults."""

from __future__ import annotations

from typing import Any

from scheduler.capacity import Workload
from scheduler.placement import PlacementRequest, SolverOptions
from tests.topology.builders import small_fabric
from topology.spec import FabricSpec
from topology.synth import SynthParams, synth_cluster


def workload(**overrides: Any) -> Workload:
    """Llama-3-70B chat traffic: 4K-token prompts, 300-token answers."""
    fields: dict[str, Any] = {"model": "llama-3-70b", "rate_rps": 20.0,
                              "input_tokens_mean": 4000.0, "output_tokens_mean": 300.0,
                              "ttft_slo_ms": 2000.0, "tpot_slo_ms": 50.0}
    fields.update(overrides)
    return Workload(**fields)


def tiny_fabric(hosts: int = 2, zones: int = 1) -> FabricSpec:
    """``zones`` zones of ``hosts`` 4-GPU hosts (GB200 trays, each its own NVLink domain)."""
    return synth_cluster(SynthParams(zones=zones, pods_per_zone=1, racks_per_pod=1,
                                     hosts_per_rack=hosts, template="gb200-nvl"))


def request(fabric: FabricSpec | None = None, **overrides: Any) -> PlacementRequest:
    """A request on ``small_fabric()`` (128 GPUs) for 10 prefill + 14 decode TP-4 instances."""
    fields: dict[str, Any] = {
        "fabric": fabric if fabric is not None else small_fabric(), "workload": workload(),
        "tp_prefill": 4, "tp_decode": 4, "prefill": 10, "decode": 14,
        "options": SolverOptions(time_limit_s=1.0)}
    fields.update(overrides)
    return PlacementRequest(**fields)
