"""The telemetry facade: one object the service feeds and scrapes.

::

    tel = Telemetry(reference=reference_figures(distance))
    tel.record_transfer(sample)                 # every finished transfer
    tel.observe_routing(decision.decision_us * 1e-6)
    tel.observe_placement(result.solve_time_s, method=result.method)
    tel.observe_prefix(hit_blocks=3, total_blocks=8)
    tel.set_link_inflight({"leaf:a1:up": 2.6e9})
    tel.render_prometheus()                     # GET /metrics body
    tel.alerts()                                # GET /alerts body (pydantic, JSON-able)
    tel.scales().apply(pair_cost)               # calibrated cost figures

Not thread-safe: the service calls it from one event loop (or behind one lock).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from scheduler.telemetry.calibration import (
    CalibratedFigures,
    CalibrationConfig,
    Calibrator,
    TierFigures,
    TierScales,
)
from scheduler.telemetry.drift import Alert, Clock, DriftConfig, DriftDetector
from scheduler.telemetry.handoff import HandoffTelemetry
from scheduler.telemetry.metrics import (
    BANDWIDTH_BUCKETS,
    LATENCY_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Registry,
)
from scheduler.telemetry.samples import TIER_LABELS, TransferSample

OVERFLOW = "other"


class TelemetryConfig(BaseModel):
    """Settings of :class:`Telemetry` (cardinality bounds, buckets, drift, calibration)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = Field(default="toposched", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    max_domain_pairs: int = Field(default=64, ge=1,
                                  description="distinct (src, dst) domain pairs labelled; "
                                              "later pairs are labelled 'other'")
    max_links: int = Field(default=1024, ge=1, description="link series of the gauges")
    latency_buckets: tuple[float, ...] = LATENCY_BUCKETS
    bandwidth_buckets: tuple[float, ...] = BANDWIDTH_BUCKETS
    drift: DriftConfig = Field(default_factory=DriftConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)


class _Families:
    """The metric families, registered in exposition order."""

    def __init__(self, cfg: TelemetryConfig) -> None:
        ns, reg = cfg.namespace, Registry()
        pair_series = len(TIER_LABELS) * (cfg.max_domain_pairs + 1) + 1
        transfer = ("tier", "src_domain", "dst_domain")
        self.latency = reg.add(Histogram(
            f"{ns}_transfer_latency_seconds", "KV transfer duration by topology tier and "
            "pair of locality domains (successful transfers).", transfer,
            buckets=cfg.latency_buckets, max_series=pair_series))
        self.bandwidth = reg.add(Histogram(
            f"{ns}_transfer_bandwidth_bytes_per_second", "Effective KV transfer bandwidth "
            "(bytes / duration) by tier and domain pair.", transfer,
            buckets=cfg.bandwidth_buckets, max_series=pair_series))
        self.transfers = reg.add(Counter(
            f"{ns}_transfers_total", "KV transfers by tier and outcome (ok, failed, "
            "expired).", ("tier", "outcome")))
        self.bytes = reg.add(Counter(
            f"{ns}_transfer_bytes_total", "Bytes moved by successful KV transfers.", ("tier",)))
        self.routing = reg.add(Histogram(
            f"{ns}_routing_decision_seconds", "Time to make one routing decision.",
            buckets=cfg.latency_buckets))
        self.placement = reg.add(Histogram(
            f"{ns}_placement_solve_seconds", "Placement solve time by method.", ("method",),
            buckets=cfg.latency_buckets, max_series=16))
        self.prefix_hits = reg.add(Counter(
            f"{ns}_prefix_cache_hit_blocks_total", "Prompt blocks found in the chosen "
            "worker's prefix cache."))
        self.prefix_total = reg.add(Counter(
            f"{ns}_prefix_cache_lookup_blocks_total", "Prompt blocks looked up in the "
            "prefix cache (hit ratio = hit / lookup)."))
        self.link_bytes = reg.add(Gauge(
            f"{ns}_link_inflight_bytes", "Bytes of transfers in flight per shared link.",
            ("link",), max_series=cfg.max_links))
        self.link_transfers = reg.add(Gauge(
            f"{ns}_link_inflight_transfers", "Transfers in flight per shared link.",
            ("link",), max_series=cfg.max_links))
        self.alerts = reg.add(Gauge(
            f"{ns}_alerts_firing", "Firing telemetry alerts (1) by kind and tier.",
            ("alert", "tier")))
        self.calibration = reg.add(Gauge(
            f"{ns}_calibration_factor", "Calibrated / configured cost-model figure per tier.",
            ("tier", "figure")))
        self.overflow = reg.add(Counter(
            f"{ns}_telemetry_label_overflow_total", "Observations whose domain pair was "
            "labelled 'other' because the pair budget was spent."))
        self.registry = reg


def inflight_by_link(transfers: Iterable[tuple[Sequence[str], float]]
                     ) -> tuple[dict[str, float], dict[str, int]]:
    """Bytes and transfer counts per shared link from ``(path_links, nbytes)`` in flight.

    ``path_links`` is what ``DistanceModel.path_links`` (or a decision's
    ``transfer.links``) gives for each transfer; the counts equal the router's
    ``link_load``. Feed both maps to :meth:`Telemetry.set_link_inflight`.
    """
    nbytes: dict[str, float] = {}
    count: dict[str, int] = {}
    for links, size in transfers:
        for link in links:
            nbytes[link] = nbytes.get(link, 0.0) + size
            count[link] = count.get(link, 0) + 1
    return nbytes, count


class Telemetry:
    """Transfer telemetry: metrics, drift alerts and cost-model calibration together."""

    def __init__(self, config: TelemetryConfig | None = None, *,
                 reference: Mapping[str, TierFigures] | None = None,
                 clock: Clock = time.time) -> None:
        """``reference``: configured figures per tier (calibration is off without it)."""
        self.config = config or TelemetryConfig()
        self.metrics = _Families(self.config)
        self.drift = DriftDetector(self.config.drift, clock=clock)
        self.calibrator = Calibrator(reference or {}, self.config.calibration)
        self._reference = dict(reference or {})
        self.clock = clock
        self._pairs: set[tuple[str, str]] = set()
        #: The gateway's per-request P/D figures by tier (same registry, own drift).
        self.handoff = HandoffTelemetry(self.metrics.registry, self.config.namespace,
                                        self.config.drift, clock)

    def use_reference(self, reference: Mapping[str, TierFigures]) -> None:
        """Calibrate against new configured figures (a new fabric): tiers whose figures
        are unchanged keep what was learnt, the others start over."""
        if dict(reference) != self._reference:
            self._reference = dict(reference)
            self.calibrator = self.calibrator.rebased(reference)

    # -- ingest ----------------------------------------------------------------------
    def record_transfer(self, sample: TransferSample) -> None:
        """Count one finished transfer into metrics, drift detection and calibration."""
        m = self.metrics
        outcome = "ok" if sample.ok else "expired" if sample.expired else "failed"
        m.transfers.inc((sample.tier, outcome))
        if not sample.ok:
            return
        labels = (sample.tier, *self._pair(sample.src_domain, sample.dst_domain))
        m.latency.observe(labels, sample.seconds)
        if sample.seconds > 0:
            m.bandwidth.observe(labels, sample.nbytes / sample.seconds)
        m.bytes.inc((sample.tier,), sample.nbytes)
        if not sample.ts:
            sample = sample.model_copy(update={"ts": self.clock()})
        self.drift.add(sample)
        self.calibrator.add(sample)

    def record_transfers(self, samples: Iterable[TransferSample]) -> None:
        """:meth:`record_transfer` for each sample."""
        for sample in samples:
            self.record_transfer(sample)

    def _pair(self, src: str, dst: str) -> tuple[str, str]:
        """The pair's labels, or ``other`` once ``max_domain_pairs`` pairs are labelled."""
        pair = (src, dst)
        if pair in self._pairs:
            return pair
        if len(self._pairs) < self.config.max_domain_pairs:
            self._pairs.add(pair)
            return pair
        self.metrics.overflow.inc()
        return OVERFLOW, OVERFLOW

    def observe_routing(self, seconds: float) -> None:
        """Time one routing decision took."""
        self.metrics.routing.observe((), seconds)

    def observe_placement(self, seconds: float, method: str = "cpsat") -> None:
        """Time one placement solve took (``method``: the placer's method name)."""
        self.metrics.placement.observe((method,), seconds)

    def observe_prefix(self, hit_blocks: int, total_blocks: int) -> None:
        """One prefix lookup: blocks the chosen worker held of the blocks asked for."""
        if not 0 <= hit_blocks <= total_blocks:
            raise ValueError(f"hit blocks {hit_blocks} not within 0..{total_blocks}")
        self.metrics.prefix_hits.inc((), hit_blocks)
        self.metrics.prefix_total.inc((), total_blocks)

    def prefix_hit_ratio(self) -> float:
        """Blocks hit / blocks looked up so far (0 before any lookup)."""
        total = self.metrics.prefix_total.value()
        return self.metrics.prefix_hits.value() / total if total else 0.0

    def set_link_inflight(self, bytes_by_link: Mapping[str, float],
                          transfers_by_link: Mapping[str, int] | None = None) -> None:
        """Replace the per-link in-flight gauges (links absent from the maps drop out)."""
        self.metrics.link_bytes.replace(((link,), float(v)) for link, v in
                                        bytes_by_link.items())
        if transfers_by_link is not None:
            self.metrics.link_transfers.replace(((link,), float(v)) for link, v in
                                                transfers_by_link.items())

    # -- outputs ---------------------------------------------------------------------
    def alerts(self, *, include_resolved: bool = True) -> list[Alert]:
        """Drift alerts, evaluated now: firing first, then recently resolved."""
        self.drift.evaluate()
        return [*self.drift.alerts(include_resolved=include_resolved),
                *self.handoff.alerts(include_resolved=include_resolved)]

    def calibration(self) -> CalibratedFigures:
        """Calibrated figures per tier (fits pending samples first)."""
        self.calibrator.flush()
        return self.calibrator.figures()

    def scales(self) -> TierScales:
        """The per-tier multiplier table for the router's cost model."""
        return self.calibration().scales()

    def render_prometheus(self) -> str:
        """Every metric in the Prometheus text format (alert and calibration gauges fresh)."""
        self.drift.evaluate()
        m = self.metrics
        self.handoff.drift.evaluate()
        m.alerts.replace(((detector.kind, tier), float(detector.firing(tier)))
                         for detector in (self.drift, self.handoff.drift)
                         for tier in detector.tiers())
        figures = self.calibrator.figures()
        m.calibration.replace(
            item for tier, c in figures.tiers.items()
            for item in (((tier, "latency"), c.latency_factor),
                         ((tier, "bandwidth"), c.bandwidth_factor)))
        return m.registry.render()
