"""Traffic as the page shows it: KV bytes in flight per shared link, transfer latency
histograms by tier and domain pair, transfers and bytes by tier, drift alerts.

The histograms are the telemetry's own series — the ones ``GET /metrics`` renders as
``toposched_transfer_latency_seconds`` — read, not recomputed.
"""

from __future__ import annotations

from typing import Any

from api.runtime import Runtime
from topology.distance import DistanceModel
from topology.errors import NotFoundError

#: Links listed by bytes in flight (the count of all is sent too).
LINKS_LISTED = 64
#: Alerts listed (firing first, then the latest resolved).
ALERTS_LISTED = 20


def traffic_frame(runtime: Runtime, distance: DistanceModel | None) -> dict[str, Any]:
    """Everything the traffic panels draw, as plain data."""
    telemetry = runtime.telemetry
    metrics = telemetry.metrics
    return {
        "links": _links(runtime, distance),
        "latency": {"bounds": list(metrics.latency.bounds), "series": [
            {"tier": tier, "src": src, "dst": dst, "counts": list(counts), "sum": total,
             "count": n} for (tier, src, dst), counts, total, n in metrics.latency.series()]},
        "transfers": [{"tier": tier, "outcome": outcome, "count": n}
                      for (tier, outcome), n in sorted(metrics.transfers.series().items())],
        "bytes": {tier: n for (tier,), n in sorted(metrics.bytes.series().items())},
        "routing": {"decisions": sum(n for *_, n in metrics.routing.series()),
                    "prefix_hit_ratio": telemetry.prefix_hit_ratio()},
        "alerts": [a.model_dump() for a in
                   _alerts(telemetry.alerts(include_resolved=True))],
    }


def _links(runtime: Runtime, distance: DistanceModel | None) -> dict[str, Any]:
    nbytes = runtime.inflight.bytes_by_link()
    count = runtime.inflight.transfers_by_link()
    top = sorted(nbytes.items(), key=lambda item: (-item[1], item[0]))[:LINKS_LISTED]
    return {"total": len(nbytes), "items": [
        {"link": link, "bytes": size, "transfers": count.get(link, 0),
         "capacity_gb_per_s": _capacity(distance, link)} for link, size in top]}


def _capacity(distance: DistanceModel | None, link: str) -> float | None:
    if distance is None:
        return None
    try:
        return distance.link_capacity_gb_per_s(link)
    except NotFoundError:
        return None


def _alerts(alerts: list[Any]) -> list[Any]:
    firing = [a for a in alerts if a.state == "firing"]
    resolved = [a for a in alerts if a.state != "firing"]
    return (firing + resolved[::-1])[:ALERTS_LISTED]
