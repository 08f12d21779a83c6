"""Transfers on the fabric: analytic time alone, fair sharing, max-min fairness."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.clock import EventKind, EventQueue
from sim.network import Flow, Network, Route
from tests.sim.builders import small_fabric
from topology.distance import DistanceModel


class _Links:
    """A stand-in distance model that only knows link capacities (GB/s)."""

    def __init__(self, capacity: dict[str, float]) -> None:
        self.capacity = capacity

    def link_capacity_gb_per_s(self, link: str) -> float:
        return self.capacity[link]


def _net(capacity: dict[str, float]) -> tuple[Network, EventQueue]:
    queue = EventQueue()
    return Network(cast(DistanceModel, _Links(capacity)), queue), queue


def _route(*links: str, lane_gb: float = 1000.0, lanes: int = 1) -> Route:
    return Route(tuple((link, lanes) for link in links), lanes, lane_gb * 1e9, 0.0, 5)


def _finish_all(net: Network, queue: EventQueue) -> dict[Any, float]:
    done = {}
    while (event := queue.pop()) is not None:
        kind, (flow, version) = event
        assert kind is EventKind.FLOW_DONE
        if net.finish(flow, version):
            done[flow.payload] = queue.now()
    return done


def _host_gpus(distance: DistanceModel, host: int) -> tuple[str, ...]:
    return tuple(distance.names[host * 8 + i] for i in range(4))


def test_one_transfer_alone_takes_the_analytic_time() -> None:
    _, distance = small_fabric()
    queue = EventQueue()
    net = Network(distance, queue)
    route = net.routes.route(_host_gpus(distance, 0), _host_gpus(distance, 1))
    assert route.lanes == 4 and route.links
    nbytes = 3.2e9
    net.start(route, nbytes, "a")
    done = _finish_all(net, queue)
    expected = nbytes / (4 * route.lane_bytes_per_s)
    assert done["a"] == pytest.approx(expected, rel=1e-9)
    assert route.analytic_s(nbytes) == pytest.approx(expected + route.latency_s)
    assert net.link_load == {}


def _alone(distance: DistanceModel, src: int, dst: int, nbytes: float) -> float:
    queue = EventQueue()
    net = Network(distance, queue)
    net.start(net.routes.route(_host_gpus(distance, src), _host_gpus(distance, dst)), nbytes, 0)
    return _finish_all(net, queue)[0]


def test_cross_zone_transfer_is_held_to_the_oversubscribed_zone_uplink() -> None:
    _, distance = small_fabric()
    route = Network(distance, EventQueue()).routes.route(_host_gpus(distance, 0),
                                                         _host_gpus(distance, 2))
    zone_up = min(distance.link_capacity_gb_per_s(link) for link, _ in route.links) * 1e9
    assert zone_up < route.lanes * route.lane_bytes_per_s  # 4 NICs > one 4:1 zone uplink
    assert _alone(distance, 0, 2, 1e9) == pytest.approx(1e9 / zone_up, rel=1e-9)


def test_two_transfers_on_the_same_path_share_it_equally() -> None:
    _, distance = small_fabric()
    alone = _alone(distance, 0, 2, 1e9)
    queue = EventQueue()
    net = Network(distance, queue)
    route = net.routes.route(_host_gpus(distance, 0), _host_gpus(distance, 2))
    net.start(route, 1e9, "a")
    net.start(route, 1e9, "b")
    done = _finish_all(net, queue)
    assert done["a"] == pytest.approx(2 * alone, rel=1e-9)
    assert done["b"] == pytest.approx(2 * alone, rel=1e-9)


def test_max_min_share_and_speed_up_when_a_flow_leaves() -> None:
    net, queue = _net({"L1": 10.0, "L2": 2.0})
    net.start(_route("L1"), 100e9, "a")
    net.start(_route("L1", "L2"), 4e9, "b")
    done = _finish_all(net, queue)
    # b is held to 2 GB/s by L2, a takes the remaining 8 GB/s of L1, then all 10
    assert done["b"] == pytest.approx(2.0)
    assert done["a"] == pytest.approx(2.0 + (100 - 16) / 10)


def test_infinite_fabric_moves_bytes_at_once() -> None:
    _, distance = small_fabric()
    queue = EventQueue()
    net = Network(distance, queue, infinite=True)
    route = net.routes.route(_host_gpus(distance, 0), _host_gpus(distance, 3))
    net.start(route, 5e9, "a")
    assert _finish_all(net, queue) == {"a": 0.0}


@given(st.lists(st.tuples(st.sets(st.sampled_from(["A", "B", "C", "D"]), min_size=1),
                          st.sampled_from([1, 2, 4]), st.floats(0.5, 50.0)),
                min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_fair_rates_are_feasible_and_every_flow_is_bottlenecked(
        specs: list[tuple[set[str], int, float]]) -> None:
    capacity = {"A": 10.0, "B": 3.0, "C": 25.0, "D": 1.0}
    net, _ = _net(capacity)
    flows = [Flow(_route(*sorted(links), lane_gb=cap, lanes=lanes), 1.0, i)
             for i, (links, lanes, cap) in enumerate(specs)]
    for flow in flows:
        for link, _ in flow.route.links:
            net.on_link.setdefault(link, {})[flow] = None
    rates = net.fair_rates(flows)
    load = dict.fromkeys(capacity, 0.0)
    for flow in flows:
        for link, lanes in flow.route.links:
            load[link] += rates[flow] * lanes
    for link, used in load.items():
        assert used <= capacity[link] * 1e9 * (1 + 1e-6)
    for flow in flows:
        at_cap = rates[flow] >= flow.route.lane_bytes_per_s * (1 - 1e-6)
        saturated = any(load[link] >= capacity[link] * 1e9 * (1 - 1e-6)
                        for link, _ in flow.route.links)
        assert at_cap or saturated
