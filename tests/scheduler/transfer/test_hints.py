"""Transport hints per tier, NICs from the fabric."""

from __future__ import annotations

import pytest

from scheduler.transfer.hints import (
    hints_for_tier,
    hints_for_workers,
    net_device,
    tier_between,
    ucx_env,
)
from tests.scheduler.transfer.builders import registration
from tests.topology.builders import SOURCE, TIER_PEERS, small_fabric
from topology.distance import DistanceModel
from topology.tiers import Tier


@pytest.mark.parametrize("tier", [Tier.NVLINK, Tier.PCIE_SWITCH, Tier.CROSS_SOCKET])
def test_same_host_vram_may_use_cuda_ipc_and_pins_no_nic(tier: Tier) -> None:
    hints = hints_for_tier(tier, "VRAM", src_nic="mlx5_0", dst_nic="mlx5_1")
    assert hints.cuda_ipc and hints.ucx_tls[0] == "cuda_ipc"
    assert hints.src_net_device is None and hints.dst_net_device is None


def test_same_host_dram_uses_shared_memory() -> None:
    hints = hints_for_tier(Tier.HOST_BRIDGE, "DRAM")
    assert not hints.cuda_ipc and "sm" in hints.ucx_tls and "rc" not in hints.ucx_tls


@pytest.mark.parametrize("tier", [Tier.SAME_LEAF, Tier.SAME_POD, Tier.SAME_ZONE])
def test_cross_host_pins_each_sides_nic(tier: Tier) -> None:
    hints = hints_for_tier(tier, "VRAM", src_nic="mlx5_3", dst_nic="mlx5_4:2")
    assert not hints.cuda_ipc and hints.ucx_tls[:2] == ("rc", "cuda_copy")
    assert (hints.src_net_device, hints.dst_net_device) == ("mlx5_3:1", "mlx5_4:2")
    assert "tcp" not in hints.ucx_tls


def test_cross_zone_adds_tcp() -> None:
    assert hints_for_tier(Tier.CROSS_ZONE, "DRAM").ucx_tls[-1] == "tcp"


def test_net_device_adds_port_one() -> None:
    assert net_device("mlx5_0") == "mlx5_0:1" and net_device(None) is None


def test_fabric_gives_tier_and_nearest_nic() -> None:
    spec = small_fabric()
    model = DistanceModel(spec)
    src = registration("p", gpus=[SOURCE])
    dst = registration("d", gpus=[TIER_PEERS["same_pod"]])
    hints = hints_for_workers(src, dst, spec=spec, model=model)
    assert hints.tier == "same_pod"
    # other rail in the same pod: the source's rail-0 NIC sends, the peer's rail-3 receives
    assert (hints.src_net_device, hints.dst_net_device) == ("mlx5_0:1", "mlx5_3:1")
    assert ucx_env(hints, "src")["UCX_NET_DEVICES"] == hints.src_net_device


def test_nvlink_peers_in_the_fabric() -> None:
    spec = small_fabric()
    src = registration("p", gpus=[SOURCE], mem_type="VRAM")
    dst = registration("d", gpus=[TIER_PEERS["nvlink"]], mem_type="VRAM")
    assert hints_for_workers(src, dst, spec=spec, model=DistanceModel(spec)).cuda_ipc


def test_without_a_fabric_only_host_names_count() -> None:
    assert tier_between(registration("a", host="h1"), registration("b", host="h1"),
                        None) == Tier.HOST_BRIDGE
    assert tier_between(registration("a", host="h1"), registration("b", host="h2"),
                        None) == Tier.SAME_ZONE


def test_unknown_gpu_names_fall_back_to_host_names() -> None:
    model = DistanceModel(small_fabric())
    a = registration("a", gpus=["nowhere/gpu0"], host="x")
    assert tier_between(a, registration("b", host="x"), model) == Tier.HOST_BRIDGE


def test_nics_named_by_the_fabric_document_win_without_a_model() -> None:
    spec = small_fabric()
    host = spec.hosts[0]
    gpus = tuple(g.model_copy(update={"nic": "mlx5_7"}) for g in host.gpus)
    spec = spec.model_copy(update={"hosts": (host.model_copy(update={"gpus": gpus}),
                                             *spec.hosts[1:])})
    src = registration("p", gpus=[SOURCE], host="a")
    dst = registration("d", gpus=[TIER_PEERS["same_pod"]], host="b")
    hints = hints_for_workers(src, dst, spec=spec)
    assert (hints.src_net_device, hints.dst_net_device) == ("mlx5_7:1", None)
