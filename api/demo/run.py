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
from api.demo.workload import BLOCK_TOKENS, AgenticWorkload, DemoRequest
from scheduler.prefix.hashing import block_hashes

TRANSFER_TIMEOUT_S = 20.0
#: Requests the demo keeps "decoding" at once (their decode load stays reserved).
IN_FLIGHT = 8


@dataclass
class DemoStats:
    """What the request stream produced, for the live view and the summary."""

    routed: int = 0
    unschedulable: int = 0
    local_prefill: int = 0
    failed: int = 0
    prompt_blocks: int = 0
    prefill_hits: int = 0
    decode_hits: int = 0
    tiers: Counter[str] = field(default_factory=Counter)
    bytes_by_tier: Counter[str] = field(default_factory=Counter)
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    decision_us: list[float] = field(default_factory=list)
    last: str = ""

    def as_json(self) -> dict[str, Any]:
        """The summary as plain data (``toposched demo --json``)."""
        return {
            "routed": self.routed, "unschedulable": self.unschedulable,
            "local_prefill": self.local_prefill, "failed_transfers": self.failed,
            "prefill_cache_hit_ratio": self.prefill_hits / max(self.prompt_blocks, 1),
            "decode_cache_hit_ratio": self.decode_hits / max(self.prompt_blocks, 1),
            "transfers_by_tier": dict(self.tiers), "bytes_by_tier": dict(self.bytes_by_tier),
            "latency_ms_p50_by_tier": {t: statistics.median(v)
                                       for t, v in self.latency_ms.items() if v},
            "decision_us_p50": statistics.median(self.decision_us) if self.decision_us else None,
        }


class DemoDriver:
    """Sends the workload through the scheduler's REST API, one request at a time."""

    def __init__(self, cluster: DemoCluster) -> None:
        self.cluster = cluster
        self.http = httpx.Client(base_url=cluster.url, timeout=30.0, headers=cluster.auth)
        self.stats = DemoStats()
        self._seq: Counter[str] = Counter()
        self._held: dict[str, set[int]] = defaultdict(set)
        #: reservations of requests still "decoding": released IN_FLIGHT requests later
        self._decoding: deque[str] = deque()

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()

    def run_one(self, request: DemoRequest) -> None:
        """Route one request, wait for its transfer, and tell the index what the engines hold."""
        hashes = block_hashes(request.tokens, BLOCK_TOKENS)
        response = self.http.post("/v1/route", json={
            "block_hashes": hashes, "model": self.cluster.model, "session": request.session,
            "request_id": request.request_id})
        if response.status_code == 503:
            self.stats.unschedulable += 1
            self.stats.last = f"{request.request_id}: unschedulable"
            return
        response.raise_for_status()
        body = response.json()
        self._account(request, body["decision"], len(hashes))
        if body["plan_id"]:
            self._await_transfer(body["plan_id"], body["decision"]["transfer"]["tier"])
        self._engine_stored(body["decision"]["prefill"]["worker"], hashes)
        self._retire(body["decision"], body["reservation_id"])

    def _retire(self, decision: dict[str, Any], reservation_id: str) -> None:
        """Prefill load ends now; decode load when IN_FLIGHT newer requests have come."""
        if decision["prefill"]["worker"] != decision["decode"]["worker"]:
            self._release(reservation_id, [decision["prefill"]["worker"]])
        self._decoding.append(reservation_id)
        while len(self._decoding) > IN_FLIGHT:
            self._release(self._decoding.popleft())

    def _release(self, reservation_id: str, workers: list[str] | None = None) -> None:
        self.http.post(f"/v1/reservations/{reservation_id}/release",
                       json={"workers": workers} if workers else None)

    def finish(self) -> None:
        """Release what is still reserved and close the HTTP client."""
        while self._decoding:
            self._release(self._decoding.popleft())
        self.close()

    def _account(self, request: DemoRequest, decision: dict[str, Any], blocks: int) -> None:
        s = self.stats
        s.routed += 1
        s.prompt_blocks += blocks
        s.prefill_hits += decision["prefill"]["cached_blocks"]
        s.decode_hits += decision["decode"]["cached_blocks"]
        s.decision_us.append(decision["decision_us"])
        if decision["mode"] == "local-prefill":
            s.local_prefill += 1
        tier = decision["transfer"]["tier"]
        s.last = (f"{request.request_id}: {decision['prefill']['worker']} → "
                  f"{decision['decode']['worker']} ({decision['mode']}, {tier}, "
                  f"{decision['transfer']['blocks']} block(s) to move, "
                  f"{decision['prefill']['cached_blocks']}/{blocks} cached at prefill)")

    def _await_transfer(self, plan_id: str, tier: str) -> None:
        deadline, version = time.monotonic() + TRANSFER_TIMEOUT_S, 0
        while time.monotonic() < deadline:
            response = self.http.get(f"/v1/transfers/{plan_id}",
                                     params={"wait_s": 2.0, "after": version})
            record = response.json()
            version = int(response.headers.get("x-record-version", version))
            if record["state"] == "done":
                self._record_done(record, tier)
                self._prefill_done(record["plan"])
                return
            if record["state"] == "failed":
                break
        self.stats.failed += 1

    def _record_done(self, record: dict[str, Any], tier: str) -> None:
        reports = record["reports"]
        initiator = next((r for r in reports if r.get("role") == "initiator"), reports[0])
        self.stats.tiers[tier] += 1
        self.stats.bytes_by_tier[tier] += int(initiator.get("bytes", 0))
        self.stats.latency_ms[tier].append(float(initiator.get("duration_s", 0.0)) * 1e3)

    def _prefill_done(self, plan: dict[str, Any]) -> None:
        """The prefill engine's staging blocks are free once the KV left (the engine keeps
        its prefix cache elsewhere; the fake engine does not model that memory)."""
        self.http.post(f"/v1/workers/{plan['src']['worker']}/free-blocks",
                       json={"blocks": plan["src_blocks"]})

    def _engine_stored(self, worker: str, hashes: list[int]) -> None:
        """The prefill engine now holds the prompt's blocks: report it as its KV events."""
        new = [h for h in hashes if h not in self._held[worker]]
        if not new:
            return
        self._held[worker].update(new)
        self._seq[worker] += 1
        parent = hashes[hashes.index(new[0]) - 1] if hashes.index(new[0]) > 0 else None
        self.http.post("/v1/kv-events", json={
            "kind": "block_stored", "worker": worker, "seq": self._seq[worker],
            "block_hashes": new, "parent_hash": parent, "model": self.cluster.model})


def live_view(stats: DemoStats, progress: Progress) -> Group:
    """The live display: progress, tiers, bytes, latencies, cache hits, the last decision."""
    table = Table(title="KV transfers by topology tier (real NIXL, host memory)")
    for column in ("tier", "transfers", "MiB moved", "latency p50 ms"):
        table.add_column(column, justify="right" if column != "tier" else "left")
    for tier, count in sorted(stats.tiers.items()):
        lat = stats.latency_ms.get(tier) or [0.0]
        table.add_row(tier, str(count), f"{stats.bytes_by_tier[tier] / 2**20:.1f}",
                      f"{statistics.median(lat):.2f}")
    hit = stats.prefill_hits / max(stats.prompt_blocks, 1)
    summary = (f"routed {stats.routed} · local prefill {stats.local_prefill} · "
               f"unschedulable {stats.unschedulable} · failed transfers {stats.failed} · "
               f"prefix cache hits at prefill {hit:.0%}")
    return Group(progress, table, summary, f"[dim]{stats.last}[/dim]")


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
