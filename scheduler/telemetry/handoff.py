"""Per-request P/D handoff figures from the gateway, by the pair's topology tier.

For each request the gateway runs through a (prefill, decode) pair it records: the
prefill leg (sent → answered), the handoff gap (prefill answered → decode leg sent),
the decode leg's time to first byte (which includes the decode engine's KV read) and,
where the decode engine reports it, its NIXL transfer time and bytes (joined when the
engine's metrics are next scraped: :meth:`HandoffTelemetry.observe_nixl`). Each goes
into a histogram labelled by tier; the decode time to first byte of disaggregated
requests also feeds a drift detector per tier (alerts of kind ``pd_handoff_drift``), so
a pair class that gets slower is flagged like a slow transfer tier; the NIXL transfers
feed the transfer drift detector.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from scheduler.telemetry.drift import Alert, Clock, DriftConfig, DriftDetector
from scheduler.telemetry.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram, Registry
from scheduler.telemetry.samples import TIER_LABELS, TransferSample

#: Tier label of requests that moved no KV (decode-only, aggregated).
LOCAL = "local"
PHASES = ("prefill", "handoff", "decode_ttft", "nixl_transfer")
PULL_OUTCOMES = ("ok", "failed", "skipped")


class Handoff(BaseModel):
    """What one request through the gateway measured (seconds; None: not this path)."""

    model_config = ConfigDict(frozen=True)

    tier: str = Field(description="the pair's tier, or 'local' when no KV moved")
    mode: str = Field(description="disaggregated, decode-only or aggregated")
    outcome: str = Field(description="ok, client-error, engine-error, cancelled")
    prefill_s: float | None = None
    handoff_s: float | None = None
    decode_ttft_s: float | None = None
    nixl_transfer_s: float | None = None
    kv_bytes: int = 0
    src_domain: str = "unknown"
    dst_domain: str = "unknown"
    pull_outcome: str | None = Field(
        default=None, description="the prefix copy before the prefill leg: ok, failed, "
                                  "skipped (planned, could not run); None: none planned")
    pull_s: float | None = None


class HandoffTelemetry:
    """The gateway's metric families (in the app's registry) and its drift detector."""

    def __init__(self, registry: Registry, namespace: str, drift: DriftConfig,
                 clock: Clock) -> None:
        """Register the families in ``registry`` under ``namespace``."""
        tiers = len(TIER_LABELS) + 2
        self.phases = registry.add(Histogram(
            f"{namespace}_gateway_phase_seconds", "Gateway requests by phase (prefill leg, "
            "handoff gap, decode time to first byte, engine NIXL transfer) and pair tier.",
            ("phase", "tier"), buckets=LATENCY_BUCKETS, max_series=len(PHASES) * tiers))
        self.requests = registry.add(Counter(
            f"{namespace}_gateway_requests_total", "Gateway requests by path taken and "
            "outcome.", ("mode", "outcome"), max_series=64))
        self.kv_bytes = registry.add(Counter(
            f"{namespace}_gateway_kv_bytes_total", "KV bytes the engines moved for gateway "
            "requests (as the decode engines' NIXL figures report), by tier.", ("tier",),
            max_series=tiers))
        self.pulls = registry.add(Counter(
            f"{namespace}_gateway_pulls_total", "Prefix copies the router planned for "
            "gateway requests, by outcome (ok, failed, skipped).", ("outcome",),
            max_series=len(PULL_OUTCOMES)))
        self.pull_seconds = registry.add(Histogram(
            f"{namespace}_gateway_pull_seconds", "Prefix copies run before the prefill leg "
            "(holder leg sent to the prefill engine's answer), by outcome.", ("outcome",),
            buckets=LATENCY_BUCKETS, max_series=len(PULL_OUTCOMES)))
        self.pull_overhead = registry.add(Gauge(
            f"{namespace}_gateway_pull_overhead_seconds", "The fixed cost the router adds to "
            "a prefix copy's fabric time (pinned, or learned from the copies run)."))
        self.drift = DriftDetector(drift, clock=clock, kind="pd_handoff_drift")

    def record(self, handoff: Handoff) -> None:
        """Count one finished request."""
        self.requests.inc((handoff.mode, handoff.outcome))
        if handoff.pull_outcome is not None:
            self.pulls.inc((handoff.pull_outcome,))
            if handoff.pull_s is not None:
                self.pull_seconds.observe((handoff.pull_outcome,), handoff.pull_s)
        for phase, seconds in zip(PHASES, (handoff.prefill_s, handoff.handoff_s,
                                           handoff.decode_ttft_s, handoff.nixl_transfer_s),
                                  strict=True):
            if seconds is not None:
                self.phases.observe((phase, handoff.tier), seconds)
        if handoff.outcome == "ok" and handoff.tier in TIER_LABELS \
                and handoff.decode_ttft_s is not None:
            self.drift.add(TransferSample(
                tier=handoff.tier, src_domain=handoff.src_domain,
                dst_domain=handoff.dst_domain, nbytes=handoff.kv_bytes,
                seconds=handoff.decode_ttft_s))

    def observe_nixl(self, tier: str, seconds: float, nbytes: int) -> None:
        """One NIXL transfer a decode engine reported for a gateway request on ``tier``
        (its drift is watched with the other transfers: ``Telemetry.record_transfer``)."""
        self.phases.observe(("nixl_transfer", tier), seconds)
        if nbytes > 0:
            self.kv_bytes.inc((tier,), nbytes)

    def alerts(self, *, include_resolved: bool) -> list[Alert]:
        """Handoff drift alerts, evaluated now."""
        self.drift.evaluate()
        return self.drift.alerts(include_resolved=include_resolved)
