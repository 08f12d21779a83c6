"""Builders for topology tests: small synthetic fabrics with keyword defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from topology.spec import FabricSpec
from topology.synth import SynthParams, synth_cluster


def small_fabric(**overrides: Any) -> FabricSpec:
    """2 zones x 2 pods x 2 racks x 2 hosts of HGX H100, rail-optimised (128 GPUs)."""
    params: dict[str, Any] = {"zones": 2, "pods_per_zone": 2, "racks_per_pod": 2,
                              "hosts_per_rack": 2}
    params.update(overrides)
    return synth_cluster(SynthParams(**params))


# Hand-computed from config/links.yaml for the HGX H100 template (one PCIe switch per
# GPU+NIC pair): GPU→NIC = pcie 1 + pcie 1 + nic_leaf 1.5 = 3.5 µs, 3 hops, 50 GB/s NIC.
EXPECTED = {
    # tier: (latency_us, bandwidth_gb_per_s, hops)
    "same_gpu": (0.0, 2000.0, 0),
    "nvlink": (2.0, 450.0, 2),            # via the host's NVSwitch, 18 x 25 GB/s
    "same_leaf": (7.0, 50.0, 6),          # 2 x 3.5 µs
    "same_pod": (9.0, 50.0, 8),           # + 2 x leaf_agg 1 µs
    "same_zone": (11.0, 50.0, 10),        # + 2 x agg_spine 1 µs
    "cross_zone": (2011.0, 50.0, 12),     # + 2 x zone_link 1000 µs
}

# One destination per tier from z0-p0-r0-h00/gpu0.
TIER_PEERS = {
    "same_gpu": "z0-p0-r0-h00/gpu0",
    "nvlink": "z0-p0-r0-h00/gpu5",
    "same_leaf": "z0-p0-r1-h01/gpu0",      # same rail (NIC 0 → rail leaf 0), other rack
    "same_pod": "z0-p0-r0-h01/gpu3",       # other rail in the same pod
    "same_zone": "z0-p1-r0-h00/gpu0",
    "cross_zone": "z1-p0-r0-h00/gpu0",
}
SOURCE = "z0-p0-r0-h00/gpu0"


def one_rack_inventory(hosts: Mapping[str, Mapping[str, object]], *, zone: str = "z",
                       top: str = "") -> str:
    """Inventory YAML with one zone, pod ``p`` and rack ``r`` holding ``hosts`` (name →
    its fields, e.g. ``{"nvsmi": path}``); ``top``: more top-level lines."""
    entries = "".join(
        "              - {name: " + name + "".join(f", {k}: {v}" for k, v in fields.items())
        + "}\n" for name, fields in hosts.items())
    return (f"version: 1\n{top}zones:\n  - name: {zone}\n    pods:\n      - name: p\n"
            f"        racks:\n          - name: r\n            hosts:\n{entries}")
