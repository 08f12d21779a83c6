"""KV transfers over the fabric, sharing link bandwidth max-min fairly.

A transfer between two instances runs one *lane* per rank pair (rank *i* of the
prefill instance to rank *i* of the decode instance, each over its own NIC), as
TP-sharded KV moves. The lanes' shared links (:meth:`DistanceModel.path_links`)
are merged into one flow that crosses each link with a multiplicity (lanes on it).
Rates come from progressive filling: every lane's rate rises together until a link
saturates (``Σ multiplicity × lane rate = capacity``) or a lane reaches its pair
bandwidth; those flows freeze and the rest keep rising.

Per the performance budget, a start or finish re-fills only the flows that share a
link with the flow that changed; other flows keep their rates and their load is
taken off the links' capacity first. Each link keeps at least 1 % of its capacity
for the re-filled flows, so a link can briefly carry up to 1 % over capacity
while earlier rates are stale. The fixed latency of the path is added once the
bytes are through.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sim.clock import EventKind, EventQueue
from topology.distance import DistanceModel

_MIN_SHARE = 0.01
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Route:
    """The fabric path of one transfer: links with their lane counts, and pair figures."""

    links: tuple[tuple[str, int], ...]
    lanes: int
    lane_bytes_per_s: float
    latency_s: float
    tier: int

    def analytic_s(self, nbytes: float) -> float:
        """Transfer time alone on the fabric: latency + bytes over all lanes."""
        return self.latency_s + nbytes / (self.lanes * self.lane_bytes_per_s)


class Routes:
    """Routes between instances (by their GPU lists), computed once per pair."""

    def __init__(self, distance: DistanceModel) -> None:
        """Routes over ``distance``'s fabric."""
        self.distance = distance
        self._memo: dict[tuple[tuple[str, ...], tuple[str, ...]], Route] = {}

    def route(self, src: Sequence[str], dst: Sequence[str]) -> Route:
        """The route from instance ``src`` (GPU names) to ``dst``."""
        key = (tuple(src), tuple(dst))
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self._build(key[0], key[1])
        return found

    def _build(self, src: tuple[str, ...], dst: tuple[str, ...]) -> Route:
        lanes = min(len(src), len(dst))
        counts: dict[str, int] = {}
        bandwidth, latency = float("inf"), 0.0
        for a, b in zip(src[:lanes], dst[:lanes], strict=True):
            cost = self.distance.pair(a, b)
            bandwidth = min(bandwidth, cost.bandwidth_gb_per_s)
            latency = max(latency, cost.latency_us * 1e-6)
            for link in self.distance.path_links(a, b):
                counts[link] = counts.get(link, 0) + 1
        tier = int(self.distance.tier(src[0], dst[0]))
        return Route(tuple(sorted(counts.items())), lanes, bandwidth * 1e9, latency, tier)


@dataclass(eq=False, slots=True)
class Flow:
    """A transfer in flight: bytes left, current rate (bytes/s), and who waits on it."""

    route: Route
    left: float
    payload: Any
    lane_rate: float = 0.0
    updated_s: float = 0.0
    version: int = 0
    started_s: float = 0.0
    on_links: bool = False
    seq: int = 0

    @property
    def rate(self) -> float:
        """Bytes per second over all lanes."""
        return self.lane_rate * self.route.lanes


class Network:
    """Flows on the fabric; schedules ``FLOW_DONE`` events on the queue."""

    def __init__(self, distance: DistanceModel, queue: EventQueue, *,
                 infinite: bool = False) -> None:
        """A network over ``distance``'s links; ``infinite``: transfers take no time."""
        self.distance, self.queue, self.infinite = distance, queue, infinite
        self.routes = Routes(distance)
        # Insertion-ordered (dicts, not sets of id-hashed flows): runs must not depend on
        # memory addresses, or event ties and float sums would differ between processes.
        self.on_link: dict[str, dict[Flow, None]] = {}
        self.link_load: dict[str, int] = {}
        self._capacity: dict[str, float] = {}
        self.flows = 0

    def capacity(self, link: str) -> float:
        """Bytes per second of a link (one direction)."""
        found = self._capacity.get(link)
        if found is None:
            found = self._capacity[link] = self.distance.link_capacity_gb_per_s(link) * 1e9
        return found

    def start(self, route: Route, nbytes: float, payload: Any) -> None:
        """Start moving ``nbytes``; ``FLOW_DONE`` fires with the flow when they are through."""
        now = self.queue.now()
        self.flows += 1
        flow = Flow(route, float(nbytes), payload, updated_s=now, started_s=now, seq=self.flows)
        if self.infinite or nbytes <= 0:
            self.queue.schedule(now, EventKind.FLOW_DONE, (flow, flow.version))
            return
        if not route.links:
            flow.lane_rate = route.lane_bytes_per_s
            self._reschedule(flow, now)
            return
        flow.on_links = True
        for link, _ in route.links:
            self.on_link.setdefault(link, {})[flow] = None
            self.link_load[link] = self.link_load.get(link, 0) + 1
        self._refill(self._neighbours(flow), now)

    def finish(self, flow: Flow, version: int) -> bool:
        """Handle ``FLOW_DONE``: True when the flow is really done (stale events: False)."""
        if version != flow.version:
            return False
        now = self.queue.now()
        if not flow.on_links:
            return True
        flow.on_links = False
        for link, _ in flow.route.links:
            self.on_link[link].pop(flow, None)
            left = self.link_load[link] - 1
            if left:
                self.link_load[link] = left
            else:
                del self.link_load[link]
        neighbours = [f for f in self._neighbours(flow) if f is not flow]
        flow.version += 1
        if neighbours:
            self._refill(neighbours, now)
        return True

    def arrival_delay(self, flow: Flow) -> float:
        """Fixed path latency added after the bytes (zero on an infinite fabric)."""
        return 0.0 if self.infinite else flow.route.latency_s

    def _neighbours(self, flow: Flow) -> list[Flow]:
        found: dict[Flow, None] = {flow: None}
        for link, _ in flow.route.links:
            found.update(self.on_link.get(link, {}))
        return sorted(found, key=lambda f: f.seq)

    def _refill(self, flows: list[Flow], now: float) -> None:
        for flow in flows:
            flow.left -= flow.rate * (now - flow.updated_s)
            flow.updated_s = now
        rates = self.fair_rates(flows)
        for flow in flows:
            flow.lane_rate = rates[flow]
            self._reschedule(flow, now)

    def _reschedule(self, flow: Flow, now: float) -> None:
        flow.version += 1
        seconds = max(flow.left, 0.0) / flow.rate if flow.rate > 0 else 0.0
        self.queue.schedule(now + seconds, EventKind.FLOW_DONE, (flow, flow.version))

    def _residual(self, flows: Collection[Flow]) -> dict[str, float]:
        residual: dict[str, float] = {}
        inside = set(flows)
        for flow in flows:
            for link, _ in flow.route.links:
                if link in residual:
                    continue
                cap = self.capacity(link)
                fixed = sum(other.lane_rate * _lanes_on(other, link)
                            for other in self.on_link[link] if other not in inside)
                residual[link] = max(cap - fixed, _MIN_SHARE * cap)
        return residual

    def fair_rates(self, flows: Collection[Flow]) -> dict[Flow, float]:
        """Lane rates of ``flows`` by progressive filling (max-min fair per lane); flows
        outside the set keep their rates and their load."""
        residual = self._residual(flows)
        weight: dict[str, float] = {}
        for flow in flows:
            for link, lanes in flow.route.links:
                weight[link] = weight.get(link, 0.0) + lanes
        active, level, rates = list(flows), 0.0, {}
        while active:
            step = min(f.route.lane_bytes_per_s for f in active) - level
            for link, w in weight.items():
                if w > 0:
                    step = min(step, residual[link] / w)
            step = max(step, 0.0)
            level += step
            full = set()
            for link, w in weight.items():
                if w > 0:
                    residual[link] -= step * w
                    if residual[link] <= _EPS * self.capacity(link):
                        full.add(link)
            frozen = [f for f in active if f.route.lane_bytes_per_s - level <= _EPS * level
                      or any(link in full for link, _ in f.route.links)]
            if not frozen:  # rounding left nothing at its limit: stop rising here
                frozen = list(active)
            for flow in frozen:
                rates[flow] = level
                for link, lanes in flow.route.links:
                    weight[link] -= lanes
            gone = set(frozen)
            active = [f for f in active if f not in gone]
        return rates


def _lanes_on(flow: Flow, link: str) -> int:
    for name, lanes in flow.route.links:
        if name == link:
            return lanes
    return 0
