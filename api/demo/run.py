"""Driving the demo: route each request, let the sidecars move the KV, show what happened."""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from api.demo.cluster import DemoCluster
from api.demo.workload import AgenticWorkload, DemoRequest
from scheduler.prefix.hashing import block_hashes
from topology.tiers import Tier

#: Table rows nearest tier first.
TIER_ORDER = {tier.label: int(tier) for tier in Tier}

TRANSFER_TIMEOUT_S = 20.0
#: A route refused for want of KV memory (503) is tried again after this long, at most
#: MAX_TRIES times: the fake engines free memory as their requests end.
RETRY_S = 0.2
MAX_TRIES = 50


@dataclass
class DemoStats:
    """What the request stream produced, for the live view and the summary."""

    routed: int = 0
    unschedulable: int = 0
    waited: int = 0
    local_prefill: int = 0
    failed: int = 0
    prompt_blocks: int = 0
    prefill_hits: int = 0
    decode_hits: int = 0
    pairs: Counter[str] = field(default_factory=Counter)
    tiers: Counter[str] = field(default_factory=Counter)
    bytes_by_tier: Counter[str] = field(default_factory=Counter)
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    #: The fabric model's figures per tier (latency µs, GB/s) from the first prefill GPU.
    model: dict[str, tuple[float, float]] = field(default_factory=dict)
    decision_us: list[float] = field(default_factory=list)
    last: str = ""

    def as_json(self) -> dict[str, Any]:
        """The summary as plain data (``toposched demo --json``)."""
        return {
            "routed": self.routed, "unschedulable": self.unschedulable,
            "retries_for_kv_memory": self.waited, "local_prefill": self.local_prefill,
            "failed_transfers": self.failed, "routes_by_pair": dict(self.pairs),
            "prefill_cache_hit_ratio": self.prefill_hits / max(self.prompt_blocks, 1),
            "decode_cache_hit_ratio": self.decode_hits / max(self.prompt_blocks, 1),
            "transfers_by_tier": dict(self.tiers), "bytes_by_tier": dict(self.bytes_by_tier),
            "latency_ms_p50_by_tier": _medians(self.latency_ms),
            "fabric_model_by_tier": {tier: {"latency_us": lat, "gb_per_s": bw}
                                     for tier, (lat, bw) in self.model.items()
                                     if tier in self.tiers},
            "decision_us_p50": statistics.median(self.decision_us) if self.decision_us else None,
        }


def _medians(values: dict[str, list[float]]) -> dict[str, float]:
    return {key: statistics.median(v) for key, v in values.items() if v}


class DemoDriver:
    """Sends the workload through the scheduler's REST API, one request at a time.

    The driver plays the client and, for requests whose decode worker prefills itself
    (nothing to move), the engine: it ends their reservation after the fake decode
    time. Requests with a transfer end when the decode side's fake engine releases
    them; the scheduler then frees their KV blocks and the rest of their load.
    """

    def __init__(self, cluster: DemoCluster) -> None:
        self.cluster = cluster
        self.http = httpx.Client(base_url=cluster.url, timeout=30.0, headers=cluster.auth)
        self.stats = DemoStats()
        #: (when it ends, reservation id) of requests with nothing to move
        self._running: deque[tuple[float, str]] = deque()

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()

    def run_one(self, request: DemoRequest) -> None:
        """Route one request and wait for its transfer."""
        self._end_due(time.monotonic())
        hashes = block_hashes(request.tokens, self.cluster.block_tokens)
        body = self._route(request, hashes)
        if body is None:
            self.stats.unschedulable += 1
            self.stats.last = f"{request.request_id}: unschedulable"
            return
        decision = body["decision"]
        self._account(request, decision, len(hashes))
        if body["plan_id"]:
            self._await_transfer(body["plan_id"], decision)
        else:
            self._running.append((time.monotonic() + self.cluster.decode_ms / 1000,
                                  body["reservation_id"]))

    def _route(self, request: DemoRequest, hashes: list[int]) -> dict[str, Any] | None:
        """The route's answer; a 503 (no decode worker has free KV memory now) is tried
        again while the fake engines end requests and free theirs."""
        for _ in range(MAX_TRIES):
            response = self.http.post("/v1/route", json={
                "block_hashes": hashes, "model": self.cluster.model,
                "session": request.session, "request_id": request.request_id})
            if response.status_code != 503:
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                return body
            self.stats.waited += 1
            time.sleep(RETRY_S)
            self._end_due(time.monotonic())
        return None

    def _end_due(self, now: float) -> None:
        while self._running and self._running[0][0] <= now:
            self._release(self._running.popleft()[1])

    def _release(self, reservation_id: str) -> None:
        self.http.post(f"/v1/reservations/{reservation_id}/release")

    def finish(self) -> None:
        """End the requests still running on the driver's side; close the HTTP client."""
        while self._running:
            self._release(self._running.popleft()[1])
        self.close()

    def _account(self, request: DemoRequest, decision: dict[str, Any], blocks: int) -> None:
        s = self.stats
        s.routed += 1
        s.prompt_blocks += blocks
        s.prefill_hits += decision["prefill"]["cached_blocks"]
        s.decode_hits += decision["decode"]["cached_blocks"]
        s.decision_us.append(decision["decision_us"])
        prefill, decode = decision["prefill"]["worker"], decision["decode"]["worker"]
        if decision["mode"] == "local-prefill":
            s.local_prefill += 1
            s.pairs[f"{decode} (prefills itself)"] += 1
        else:
            s.pairs[f"{prefill} → {decode}"] += 1
        tier = decision["transfer"]["tier"]
        s.last = (f"{request.request_id}: {prefill} → {decode} ({decision['mode']}, {tier}, "
                  f"{decision['transfer']['blocks']} block(s) to move, "
                  f"{decision['prefill']['cached_blocks']}/{blocks} cached at prefill)")

    def _await_transfer(self, plan_id: str, decision: dict[str, Any]) -> None:
        deadline, version = time.monotonic() + TRANSFER_TIMEOUT_S, 0
        while time.monotonic() < deadline:
            response = self.http.get(f"/v1/transfers/{plan_id}",
                                     params={"wait_s": 2.0, "after": version})
            record = response.json()
            version = int(response.headers.get("x-record-version", version))
            if record["state"] == "done":
                self._record_done(record, decision)
                return
            if record["state"] != "pending":
                break
        self.stats.failed += 1

    def _record_done(self, record: dict[str, Any], decision: dict[str, Any]) -> None:
        """Count a transfer by the tier of its pair, with the time its initiator's NIXL
        request took (here: host memory over loopback, whatever the tier)."""
        reports = record["reports"]
        initiator = next((r for r in reports if r.get("role") == "initiator"), reports[0])
        tier = decision["transfer"]["tier"]
        self.stats.tiers[tier] += 1
        self.stats.bytes_by_tier[tier] += int(initiator.get("bytes", 0))
        self.stats.latency_ms[tier].append(float(initiator.get("duration_s", 0.0)) * 1e3)


def live_view(stats: DemoStats, progress: Progress) -> Group:
    """The live display: progress, tiers, bytes, latencies, cache hits, the last decision."""
    table = Table(title="KV transfers by topology tier (real NIXL between the sidecars)",
                  caption="here: NIXL time measured on this machine (host memory, loopback); "
                          "model: the fabric path's latency and bandwidth")
    for column in ("tier", "transfers", "MiB", "p50 ms here", "model µs", "model GB/s"):
        table.add_column(column, justify="right" if column != "tier" else "left")
    for tier, count in sorted(stats.tiers.items(), key=lambda item: TIER_ORDER.get(item[0], 99)):
        lat = stats.latency_ms.get(tier) or [0.0]
        model_lat, model_bw = stats.model.get(tier, (float("nan"), float("nan")))
        table.add_row(tier, str(count), f"{stats.bytes_by_tier[tier] / 2**20:.1f}",
                      f"{statistics.median(lat):.2f}", f"{model_lat:.1f}", f"{model_bw:.0f}")
    pairs = Table(title="routes: prefill worker → decode worker")
    pairs.add_column("pair")
    pairs.add_column("requests", justify="right")
    for pair, count in sorted(stats.pairs.items()):
        pairs.add_row(pair, str(count))
    hit = stats.prefill_hits / max(stats.prompt_blocks, 1)
    summary = (f"routed {stats.routed} · local prefill {stats.local_prefill} · "
               f"retried for KV memory {stats.waited} · unschedulable {stats.unschedulable} · "
               f"failed transfers {stats.failed} · prefix cache hits at prefill {hit:.0%}")
    return Group(progress, table, pairs, summary, f"[dim]{stats.last}[/dim]")


def drive(driver: DemoDriver, workload: AgenticWorkload, show: bool) -> DemoStats:
    """Run the whole workload, with a live view when ``show``."""
    progress = Progress(TextColumn("requests"), BarColumn(), MofNCompleteColumn())
    task = progress.add_task("requests", total=workload.total)
    if not show:
        for request in workload.requests():
            driver.run_one(request)
        return driver.stats
    with Live(live_view(driver.stats, progress), refresh_per_second=8) as live:
        for request in workload.requests():
            driver.run_one(request)
            progress.advance(task)
            live.update(live_view(driver.stats, progress))
    return driver.stats
