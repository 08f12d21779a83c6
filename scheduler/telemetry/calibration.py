"""Cost-model calibration: measured latency and bandwidth per tier, bounded and smoothed.

Per tier, the last ``window`` successful transfers ``(nbytes, seconds)`` are fitted to
``seconds = latency + nbytes / bandwidth`` every ``refit_every`` samples:

* weighted least squares on *relative* residuals (``(fit - seconds) / seconds``), so a
  1 KB and a 1 GB transfer count alike, twice, dropping samples whose relative
  residual is more than ``outlier_mads`` median absolute deviations from the median
  (a congested or retried transfer does not drag the fit);
* when the sizes barely vary (``max/min < min_size_spread``) the intercept cannot be
  told from the slope: the latency estimate is kept and the bandwidth is the median
  of ``nbytes / (seconds - latency)``.

Each fit becomes a pair of factors against the configured (reference) figures of the
tier, clamped to ``[lower, upper]`` (default 0.25×–2×), and is folded into an EWMA of
the factors in log space (so halving and doubling weigh the same). The result only
ever moves inside the clamp. :meth:`TierScales.apply` multiplies a
:class:`~topology.distance.PairCost` by its tier's factors, which is how the router's
cost model consumes the calibration without knowing about telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.telemetry.samples import TransferSample
from scheduler.telemetry.stats import FloatArray
from topology.distance import DistanceModel, PairCost
from topology.tiers import Tier


class TierFigures(BaseModel):
    """The cost model's (reference) figures of one tier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_us: float = Field(ge=0)
    bandwidth_gb_per_s: float = Field(gt=0)


class CalibrationConfig(BaseModel):
    """Settings of the calibrator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(default=256, ge=4, description="samples per tier kept for the fit")
    min_samples: int = Field(default=16, ge=2, description="samples before the first fit")
    refit_every: int = Field(default=32, ge=1, description="new samples between fits")
    smoothing: float = Field(default=0.3, gt=0, le=1, description="EWMA weight of a fit")
    lower: float = Field(default=0.25, gt=0, le=1, description="smallest factor")
    upper: float = Field(default=2.0, ge=1, description="largest factor")
    outlier_mads: float = Field(default=3.5, gt=0)
    min_size_spread: float = Field(default=4.0, gt=1, description="max/min bytes to fit both")

    @model_validator(mode="after")
    def _window_holds_min(self) -> Self:
        if self.min_samples > self.window:
            raise ValueError("min_samples must not exceed window")
        return self


class TierCalibration(BaseModel):
    """Calibrated figures of one tier and the factors against its reference."""

    model_config = ConfigDict(frozen=True)

    latency_us: float
    bandwidth_gb_per_s: float
    latency_factor: float
    bandwidth_factor: float
    samples: int = Field(description="successful samples seen")
    fits: int = Field(description="fits folded into the estimate")


class TierScales(BaseModel):
    """Per-tier ``(latency_factor, bandwidth_factor)``; tiers not listed scale by 1."""

    model_config = ConfigDict(frozen=True)

    factors: dict[str, tuple[float, float]] = Field(default_factory=dict)

    def scale(self, tier: Tier | str) -> tuple[float, float]:
        """``(latency_factor, bandwidth_factor)`` of one tier."""
        label = tier.label if isinstance(tier, Tier) else tier
        return self.factors.get(label, (1.0, 1.0))

    def apply(self, cost: PairCost) -> PairCost:
        """``cost`` with its latency and bandwidth multiplied by its tier's factors."""
        lat, bw = self.scale(cost.tier)
        return replace(cost, latency_us=cost.latency_us * lat,
                       bandwidth_gb_per_s=cost.bandwidth_gb_per_s * bw)

    def apply_arrays(self, tiers: np.ndarray, latency_us: FloatArray,
                     bandwidth_gb_per_s: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The vectorised form, for ``DistanceModel.costs_from`` output."""
        table = np.ones((len(Tier), 2))
        for label, factors in self.factors.items():
            table[Tier.from_label(label)] = factors
        codes = np.asarray(tiers, dtype=np.int64)
        return latency_us * table[codes, 0], bandwidth_gb_per_s * table[codes, 1]


class CalibratedFigures(BaseModel):
    """Calibration of every tier that has a reference and enough samples."""

    model_config = ConfigDict(frozen=True)

    tiers: dict[str, TierCalibration]

    def scales(self) -> TierScales:
        """The multiplier table the cost model applies."""
        return TierScales(factors={t: (c.latency_factor, c.bandwidth_factor)
                                   for t, c in self.tiers.items()})


@dataclass
class _TierFit:
    """A ring buffer of ``(nbytes, seconds)`` and the smoothed log-factors of one tier."""

    reference: TierFigures
    nbytes: FloatArray
    seconds: FloatArray
    size: int = 0
    head: int = 0
    log_lat: float = 0.0
    log_bw: float = 0.0
    samples: int = 0
    fits: int = 0
    pending: int = 0


class Calibrator:
    """Feeds measured transfers back into per-tier cost-model factors."""

    def __init__(self, reference: Mapping[str, TierFigures],
                 config: CalibrationConfig | None = None) -> None:
        """``reference``: configured figures per tier label (see :func:`reference_figures`)."""
        self.config = config or CalibrationConfig()
        window = self.config.window
        self._tiers = {tier: _TierFit(figures, np.zeros(window), np.zeros(window))
                       for tier, figures in reference.items()}

    def rebased(self, reference: Mapping[str, TierFigures]) -> Calibrator:
        """A calibrator for new reference figures that keeps the fits (samples and
        factors) of every tier whose figures are unchanged."""
        fresh = Calibrator(reference, self.config)
        fresh._tiers.update({tier: fit for tier, fit in self._tiers.items()
                             if reference.get(tier) == fit.reference})
        return fresh

    def add(self, sample: TransferSample) -> None:
        """Take one sample; failures, zero durations and unknown tiers are ignored."""
        fit = self._tiers.get(sample.tier)
        if fit is None or not sample.ok or sample.seconds <= 0:
            return
        fit.nbytes[fit.head], fit.seconds[fit.head] = sample.nbytes, sample.seconds
        fit.head = (fit.head + 1) % self.config.window
        fit.size = min(fit.size + 1, self.config.window)
        fit.samples += 1
        fit.pending += 1
        if fit.pending >= self.config.refit_every and fit.size >= self.config.min_samples:
            self._refit(fit)

    def flush(self) -> None:
        """Fold the samples not yet fitted into the estimates now."""
        for fit in self._tiers.values():
            if fit.pending and fit.size >= self.config.min_samples:
                self._refit(fit)

    def _refit(self, fit: _TierFit) -> None:
        fit.pending = 0
        cfg = self.config
        current_lat_s = fit.reference.latency_us * 1e-6 * math.exp(fit.log_lat)
        latency_s, bandwidth = _fit(fit.nbytes[:fit.size], fit.seconds[:fit.size],
                                    current_lat_s, cfg)
        lat_factor = _ratio(latency_s, fit.reference.latency_us * 1e-6)
        bw_factor = _ratio(bandwidth, fit.reference.bandwidth_gb_per_s * 1e9)
        a = cfg.smoothing
        fit.log_lat += a * (math.log(self._clamp(lat_factor)) - fit.log_lat)
        fit.log_bw += a * (math.log(self._clamp(bw_factor)) - fit.log_bw)
        fit.fits += 1

    def _clamp(self, factor: float) -> float:
        return min(self.config.upper, max(self.config.lower, factor))

    def figures(self) -> CalibratedFigures:
        """Calibrated figures of every tier fitted at least once."""
        out: dict[str, TierCalibration] = {}
        for tier, fit in self._tiers.items():
            if fit.fits == 0:
                continue
            lat, bw = self._clamp(math.exp(fit.log_lat)), self._clamp(math.exp(fit.log_bw))
            out[tier] = TierCalibration(
                latency_us=fit.reference.latency_us * lat,
                bandwidth_gb_per_s=fit.reference.bandwidth_gb_per_s * bw,
                latency_factor=lat, bandwidth_factor=bw, samples=fit.samples, fits=fit.fits)
        return CalibratedFigures(tiers=out)

    def scales(self) -> TierScales:
        """Shortcut for ``figures().scales()``."""
        return self.figures().scales()


def _ratio(measured: float, reference: float) -> float:
    """measured / reference; 1 when the reference is 0 (nothing to scale)."""
    if reference <= 0:
        return 1.0
    return measured / reference if math.isfinite(measured) else math.inf


def _fit(x: FloatArray, y: FloatArray, latency_s: float,
         cfg: CalibrationConfig) -> tuple[float, float]:
    """``(latency seconds, bandwidth bytes/s)`` fitted to bytes ``x`` and seconds ``y``."""
    if x.max() < cfg.min_size_spread * max(float(x.min()), 1.0):
        return latency_s, _bandwidth_only(x, y, latency_s)
    intercept, slope = _relative_lstsq(x, y)
    keep = np.ones(len(x), dtype=bool)
    for _ in range(2):  # reject, refit; a second round catches what the first fit hid
        inliers = _inliers((intercept + slope * x - y) / y, cfg.outlier_mads)
        if np.array_equal(inliers, keep):
            break
        keep = inliers
        intercept, slope = _relative_lstsq(x[keep], y[keep])
    bandwidth = 1.0 / slope if slope > 0 else math.inf
    return max(intercept, 0.0), bandwidth


def _relative_lstsq(x: FloatArray, y: FloatArray) -> tuple[float, float]:
    """Minimise Σ((a + b·x − y) / y)² through the 2×2 normal equations.

    ``x`` is scaled to [0, 1] first so the equations stay well conditioned for
    byte counts up to 2⁶⁴.
    """
    unit = float(x.max()) or 1.0
    u, w = x / unit, 1.0 / y
    s11, s12, s22 = float(w @ w), float((u * w) @ w), float((u * w) @ (u * w))
    b1, b2 = float(w.sum()), float((u * w).sum())
    det = s11 * s22 - s12 * s12
    if det <= 1e-12 * s11 * s22:
        return 0.0, _median(y / np.maximum(x, 1.0))
    a = (b1 * s22 - b2 * s12) / det
    b = (s11 * b2 - s12 * b1) / det
    return a, b / unit


def _median(values: FloatArray) -> float:
    """Median by one sort (np.median's overhead dominates at a few hundred values)."""
    ordered = np.sort(values)
    mid = ordered.size // 2
    return float(ordered[mid] if ordered.size % 2 else (ordered[mid - 1] + ordered[mid]) / 2)


def _inliers(residual: FloatArray, mads: float) -> np.ndarray:
    centre = _median(residual)
    spread = 1.4826 * _median(np.abs(residual - centre))
    if spread <= 0:
        return np.ones(len(residual), dtype=bool)
    mask: np.ndarray = np.abs(residual - centre) <= mads * spread
    return mask


def _bandwidth_only(x: FloatArray, y: FloatArray, latency_s: float) -> float:
    transfer = y - latency_s
    usable = (transfer > 0) & (x > 0)
    if not usable.any():
        return math.inf
    return _median(x[usable] / transfer[usable])


def reference_figures(distance: DistanceModel, sources: int = 16) -> dict[str, TierFigures]:
    """Median configured latency and bandwidth per tier, from a spread of source GPUs.

    The cost model's figures vary a little inside a tier (NIC placement, uplink sizes);
    the median over ``sources`` GPUs against every GPU is the tier's reference.
    """
    n = len(distance.names)
    everyone = np.arange(n, dtype=np.int64)
    tiers, lats, bws = [], [], []
    for a in np.unique(np.linspace(0, n - 1, min(n, sources)).astype(np.int64)):
        t, lat, bw, _ = distance.costs_from(int(a), everyone)
        tiers.append(t)
        lats.append(lat)
        bws.append(bw)
    tier, lat, bw = np.concatenate(tiers), np.concatenate(lats), np.concatenate(bws)
    return {Tier(int(code)).label: TierFigures(
                latency_us=float(np.median(lat[tier == code])),
                bandwidth_gb_per_s=float(np.median(bw[tier == code])))
            for code in np.unique(tier)}
