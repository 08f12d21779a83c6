"""The distance/cost model: hand-computed tiers and figures, vectorised == scalar."""

from __future__ import annotations

import numpy as np
import pytest

from tests.topology.builders import EXPECTED, SOURCE, TIER_PEERS, small_fabric
from topology.distance import DistanceModel
from topology.errors import NotFoundError
from topology.graph import build_graph, gpu_node, path_figures, shortest_path
from topology.tiers import Tier


@pytest.fixture(scope="module")
def model() -> DistanceModel:
    return DistanceModel(small_fabric())


@pytest.mark.parametrize("tier", list(EXPECTED))
def test_every_tier_matches_hand_computed_figures(model: DistanceModel, tier: str) -> None:
    pair = model.pair(SOURCE, TIER_PEERS[tier])
    latency, bandwidth, hops = EXPECTED[tier]
    assert pair.tier.label == tier
    assert pair.latency_us == pytest.approx(latency)
    assert pair.bandwidth_gb_per_s == pytest.approx(bandwidth)
    assert pair.hops == hops


def test_transfer_time_is_latency_plus_bytes_over_bandwidth(model: DistanceModel) -> None:
    seconds = model.transfer_time(SOURCE, TIER_PEERS["same_leaf"], 1 << 30)
    assert seconds == pytest.approx(7e-6 + (1 << 30) / 50e9)


def test_nvlink_disallowed_falls_back_to_pcie_paths() -> None:
    model = DistanceModel(small_fabric(), nvlink_across_processes=False)
    same_socket = model.pair(SOURCE, "z0-p0-r0-h00/gpu1")
    assert (same_socket.tier, same_socket.latency_us, same_socket.hops) == \
        (Tier.HOST_BRIDGE, pytest.approx(4.0), 4)
    cross_socket = model.pair(SOURCE, "z0-p0-r0-h00/gpu4")
    assert cross_socket.tier == Tier.CROSS_SOCKET
    assert cross_socket.bandwidth_gb_per_s == pytest.approx(40.0)  # the socket link


def test_vectorised_answers_equal_scalar_answers(model: DistanceModel) -> None:
    everyone = np.arange(len(model.names))
    for a in (0, 13, 77, len(model.names) - 1):
        tiers, lat, bw, hops = model.costs_from(a, everyone)
        for b in range(0, len(model.names), 7):
            pair = model.pair(a, b)
            assert (int(tiers[b]), int(hops[b])) == (int(pair.tier), pair.hops)
            assert lat[b] == pytest.approx(pair.latency_us)
            assert bw[b] == pytest.approx(pair.bandwidth_gb_per_s)


def test_model_agrees_with_networkx_on_the_same_graph(model: DistanceModel) -> None:
    graph = build_graph(model.spec)
    for tier, peer in TIER_PEERS.items():
        if tier in ("same_gpu", "nvlink"):
            continue
        host_a, _, _ = SOURCE.rpartition("/")
        host_b, _, gpu_b = peer.rpartition("/")
        path = shortest_path(graph, gpu_node(host_a, 0), gpu_node(host_b, int(gpu_b[3:])))
        latency, bandwidth, hops = path_figures(graph, path)
        assert (latency, bandwidth, hops) == (pytest.approx(EXPECTED[tier][0]),
                                              pytest.approx(EXPECTED[tier][1]), EXPECTED[tier][2])


def test_oversubscribed_zone_link_bounds_cross_zone_bandwidth() -> None:
    model = DistanceModel(small_fabric(zone_oversubscription=1000.0))
    pair = model.pair(SOURCE, TIER_PEERS["cross_zone"])
    # zone uplink = 2 pods x pod uplink / 1000; each pod uplink = 8 rails x 4 hosts x 400 / 2
    assert pair.bandwidth_gb_per_s == pytest.approx(2 * 6400 / 1000 / 8)


def test_path_links_name_each_shared_link_once_per_direction(model: DistanceModel) -> None:
    links = model.path_links(SOURCE, TIER_PEERS["same_zone"])
    assert links == ("nic:z0-p0-r0-h00/mlx5_0:tx", "leaf:z0-p0-rail0:up", "pod:z0-p0:up",
                     "pod:z0-p1:down", "leaf:z0-p1-rail0:down", "nic:z0-p1-r0-h00/mlx5_0:rx")
    assert model.path_links(SOURCE, TIER_PEERS["nvlink"]) == ()
    assert model.link_capacity_gb_per_s("nic:z0-p0-r0-h00/mlx5_0:tx") == 50.0


def test_multi_host_nvlink_domain_is_nvlink_tier() -> None:
    model = DistanceModel(small_fabric(nvlink_domain_per_rack=True))
    pair = model.pair(SOURCE, "z0-p0-r0-h01/gpu3")
    assert (pair.tier, pair.hops, pair.bandwidth_gb_per_s) == (Tier.NVLINK, 2, 450.0)
    assert model.locality(SOURCE).nvlink_domain == "z0-p0-r0-nvl"


def test_locality_names_every_level(model: DistanceModel) -> None:
    loc = model.locality(SOURCE)
    assert (loc.zone, loc.pod, loc.rack, loc.leaf, loc.host) == \
        ("z0", "z0-p0", "z0-p0-r0", "z0-p0-rail0", "z0-p0-r0-h00")


def test_unknown_gpu_is_a_clear_error(model: DistanceModel) -> None:
    with pytest.raises(NotFoundError, match="HOST/gpuN"):
        model.pair("nope/gpu0", SOURCE)
    with pytest.raises(NotFoundError):
        model.pair(10_000, 0)
    assert model.index("z0-p0-r0-h00/GPU3") == model.index("z0-p0-r0-h00/gpu3")


def test_tor_fabric_keeps_a_rack_on_one_leaf() -> None:
    model = DistanceModel(small_fabric(rails=False))
    assert model.tier(SOURCE, "z0-p0-r0-h01/gpu3") == Tier.SAME_LEAF
    assert model.tier(SOURCE, "z0-p0-r1-h00/gpu0") == Tier.SAME_POD


def test_hosts_of_one_shape_share_one_intra_host_computation() -> None:
    """Hosts cabled to different leaves and ports are still one shape: the intra-host
    matrices are computed once (a per-host field in the cache key made an 8,192-GPU
    build run 1,024 Dijkstra passes, 13 s instead of 0.1 s)."""
    from topology import distance
    from topology.synth import SynthParams, synth_cluster

    spec = synth_cluster(SynthParams(zones=1, pods_per_zone=2, racks_per_pod=2,
                                     hosts_per_rack=3))
    cabling = {tuple((nic.leaf, nic.port) for nic in host.nics) for host in spec.hosts}
    assert len(cabling) == len(spec.hosts)  # every host is cabled differently
    distance._shape_matrices.cache_clear()
    model = DistanceModel(spec)
    assert distance._shape_matrices.cache_info().misses == 1
    assert model.pair(0, 1) == DistanceModel(spec).pair(0, 1)


def test_host_shape_keeps_what_the_matrices_depend_on() -> None:
    from topology.distance import host_shape
    from topology.synth import SynthParams, synth_cluster

    host = synth_cluster(SynthParams(zones=1, pods_per_zone=1, racks_per_pod=1,
                                     hosts_per_rack=1)).hosts[0]
    moved = host.model_copy(update={"nics": (
        host.nics[0].model_copy(update={"pcie_switch": "elsewhere"}), *host.nics[1:])})
    assert host_shape(moved) != host_shape(host)
    recabled = host.model_copy(update={"name": "other", "nics": tuple(
        nic.model_copy(update={"leaf": "x", "port": "p9"}) for nic in host.nics)})
    assert host_shape(recabled) == host_shape(host)
