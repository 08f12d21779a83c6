"""Transfer-latency drift alerts per topology tier.

Per tier, the latencies of successful transfers are kept in two windows: a
*baseline* (the first ``baseline_size`` samples, or one set explicitly) and a
*recent* window of the last ``window`` samples. Every ``check_every`` samples (and on
:meth:`DriftDetector.evaluate`) the recent window is compared with the baseline; an
alert fires when **both** hold:

* the recent p99 is at least ``p99_factor`` × the baseline p99 (the shift matters), and
* a two-sample Kolmogorov–Smirnov test rejects "same distribution" at ``alpha``
  (the shift is not noise of a small window).

Neither check runs below ``min_samples`` in either window. A firing alert resolves
after ``clear_checks`` consecutive evaluations with the recent p99 under
``clear_factor`` × baseline (hysteresis: ``clear_factor < p99_factor``), or when its
recent window runs dry (samples older than ``max_age_s`` are dropped). With
``rolling`` on, samples leaving the recent window join the baseline while no alert
fires, so slow, benign drift is absorbed; a firing alert freezes its tier's baseline
so the baseline never learns the degraded state.

Alerts name the domain pairs behind the shift: the pairs with the most recent
samples above the baseline p99 beyond the 1 % expected of them.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scheduler.telemetry.samples import TIER_LABELS, TransferSample
from scheduler.telemetry.stats import KsResult, ks_2samp, quantile
from topology.errors import InputError

AlertState = Literal["firing", "resolved"]
#: What drifted: engine-reported KV transfers, or the gateway's P/D handoff (decode
#: time to first token of disaggregated requests).
AlertKind = Literal["transfer_latency_drift", "pd_handoff_drift"]
Clock = Callable[[], float]


class DriftConfig(BaseModel):
    """Settings of the drift detector (defaults suit a few transfers per second per tier)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    baseline_size: int = Field(default=500, ge=2, description="samples in a tier's baseline")
    window: int = Field(default=200, ge=2, description="recent samples compared")
    min_samples: int = Field(default=50, ge=2, description="both windows need this many")
    quantile: float = Field(default=0.99, gt=0, lt=1, description="the tail compared")
    p99_factor: float = Field(default=1.5, gt=1, description="fire at recent/baseline ≥ this")
    clear_factor: float = Field(default=1.2, ge=1, description="clear under this ratio")
    clear_checks: int = Field(default=3, ge=1, description="consecutive calm checks to clear")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="KS significance level")
    check_every: int = Field(default=16, ge=1, description="evaluate a tier every N samples")
    max_age_s: float | None = Field(default=900.0, gt=0, description="drop older samples")
    rolling: bool = Field(default=True, description="baseline absorbs calm samples")
    top_pairs: int = Field(default=3, ge=1, description="domain pairs named per alert")
    max_resolved: int = Field(default=50, ge=0, description="resolved alerts remembered")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.clear_factor >= self.p99_factor:
            raise ValueError("clear_factor must be below p99_factor (hysteresis)")
        if self.min_samples > min(self.window, self.baseline_size):
            raise ValueError("min_samples must not exceed window or baseline_size")
        return self


class PairShare(BaseModel):
    """One domain pair's part in a shift: its recent samples over the baseline p99."""

    model_config = ConfigDict(frozen=True)

    src_domain: str
    dst_domain: str
    slow_samples: int
    samples: int
    share: float = Field(description="fraction of all slow recent samples of the tier")


class Alert(BaseModel):
    """A latency drift alert on one tier (JSON-able)."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: AlertKind = "transfer_latency_drift"
    tier: str
    domains: tuple[str, ...] = Field(description="domains of the pairs behind the shift")
    pairs: tuple[PairShare, ...]
    baseline_p99_ms: float
    recent_p99_ms: float
    factor: float = Field(description="recent p99 / baseline p99")
    p_value: float = Field(description="two-sample KS p-value, recent vs baseline")
    ks_statistic: float
    baseline_samples: int
    recent_samples: int
    since: float = Field(description="clock time the alert fired")
    updated_at: float
    resolved_at: float | None = None
    state: AlertState = "firing"


@dataclass
class _Tier:
    """Windows and alert state of one tier."""

    baseline: deque[float]
    recent: deque[float]
    meta: deque[tuple[float, str, str]]  # (ts, src_domain, dst_domain) beside ``recent``
    frozen_baseline: bool = False
    pending: int = 0
    calm: int = 0
    alert: Alert | None = None
    fed: int = 0


@dataclass(frozen=True)
class _Comparison:
    baseline_p99: float
    recent_p99: float
    ratio: float
    ks: KsResult


class DriftDetector:
    """Per-tier drift detection over transfer samples (see the module docstring)."""

    def __init__(self, config: DriftConfig | None = None, *, clock: Clock = time.time,
                 kind: AlertKind = "transfer_latency_drift") -> None:
        """Create an empty detector; ``clock`` stamps alerts and ages samples; ``kind``
        names what its alerts are about."""
        self.config = config or DriftConfig()
        self.kind: AlertKind = kind
        self.clock = clock
        self._tiers: dict[str, _Tier] = {}
        self._resolved: deque[Alert] = deque(maxlen=self.config.max_resolved)
        self._next_id = 1

    # -- ingest ----------------------------------------------------------------------
    def add(self, sample: TransferSample) -> None:
        """Take one sample (failures are ignored: their duration is a timeout, not a path)."""
        if not sample.ok:
            return
        state = self._state(sample.tier)
        if not state.frozen_baseline and state.fed < self.config.baseline_size:
            state.baseline.append(sample.seconds)
            state.fed += 1
            return
        if len(state.recent) == self.config.window:
            self._retire(state)
        state.recent.append(sample.seconds)
        state.meta.append((sample.ts or self.clock(), sample.src_domain, sample.dst_domain))
        state.pending += 1
        if state.pending >= self.config.check_every:
            self._evaluate(sample.tier, state, self.clock())

    def set_baseline(self, tier: str, seconds: Sequence[float], *, frozen: bool = True) -> None:
        """Set a tier's baseline explicitly (``frozen``: never roll it)."""
        if len(seconds) < self.config.min_samples:
            raise InputError(f"baseline of {tier} needs at least {self.config.min_samples} "
                             f"samples, got {len(seconds)}")
        state = self._state(tier)
        state.baseline = deque((float(s) for s in seconds), maxlen=self.config.baseline_size)
        state.frozen_baseline = frozen
        state.fed = self.config.baseline_size

    def _state(self, tier: str) -> _Tier:
        state = self._tiers.get(tier)
        if state is None:
            if tier not in TIER_LABELS:
                raise InputError(f"unknown tier {tier!r}")
            cfg = self.config
            state = _Tier(deque(maxlen=cfg.baseline_size), deque(), deque())
            self._tiers[tier] = state
        return state

    def _retire(self, state: _Tier) -> None:
        """Drop the oldest recent sample, into the baseline when that may roll."""
        seconds = state.recent.popleft()
        state.meta.popleft()
        if self.config.rolling and not state.frozen_baseline and state.alert is None:
            state.baseline.append(seconds)

    # -- evaluation ------------------------------------------------------------------
    def evaluate(self, now: float | None = None) -> None:
        """Check every tier with new samples since its last check, expiring old ones first."""
        when = self.clock() if now is None else now
        for tier, state in self._tiers.items():
            self._evaluate(tier, state, when)

    def _evaluate(self, tier: str, state: _Tier, now: float) -> None:
        # Only new or expired samples make a new check: re-checking the same window
        # would count towards ``clear_checks`` without any new evidence.
        expired = self._expire(state, now)
        if not state.pending and not expired:
            return
        state.pending = 0
        cfg = self.config
        if len(state.baseline) < cfg.min_samples or len(state.recent) < cfg.min_samples:
            if state.alert is not None:
                self._resolve(state, now)
            return
        comparison = self._compare(state)
        if state.alert is None:
            if comparison.ratio >= cfg.p99_factor and comparison.ks.p_value < cfg.alpha:
                state.alert = self._alert(tier, state, comparison, now, None)
                self._next_id += 1
            return
        self._follow(tier, state, comparison, now)

    def _follow(self, tier: str, state: _Tier, comparison: _Comparison, now: float) -> None:
        """Update a firing alert, resolving it after enough calm checks."""
        if comparison.ratio < self.config.clear_factor:
            state.calm += 1
            if state.calm >= self.config.clear_checks:
                self._resolve(state, now)
                return
        else:
            state.calm = 0
        assert state.alert is not None
        state.alert = self._alert(tier, state, comparison, now, state.alert)

    def _expire(self, state: _Tier, now: float) -> int:
        """Retire recent samples older than ``max_age_s``; how many were retired."""
        if self.config.max_age_s is None:
            return 0
        horizon, retired = now - self.config.max_age_s, 0
        while state.meta and state.meta[0][0] < horizon:
            self._retire(state)
            retired += 1
        return retired

    def _compare(self, state: _Tier) -> _Comparison:
        base = np.sort(np.fromiter(state.baseline, dtype=np.float64, count=len(state.baseline)))
        recent = np.sort(np.fromiter(state.recent, dtype=np.float64, count=len(state.recent)))
        q = self.config.quantile
        b99, r99 = quantile(base, q, presorted=True), quantile(recent, q, presorted=True)
        ratio = r99 / b99 if b99 > 0 else (float("inf") if r99 > 0 else 1.0)
        return _Comparison(b99, r99, ratio, ks_2samp(recent, base, presorted=True))

    def _resolve(self, state: _Tier, now: float) -> None:
        assert state.alert is not None
        self._resolved.append(state.alert.model_copy(
            update={"state": "resolved", "resolved_at": now, "updated_at": now}))
        state.alert, state.calm = None, 0

    def _alert(self, tier: str, state: _Tier, comparison: _Comparison, now: float,
               previous: Alert | None) -> Alert:
        pairs = self._culprits(state, comparison.baseline_p99)
        domains = sorted({d for p in pairs for d in (p.src_domain, p.dst_domain)})
        return Alert(
            id=previous.id if previous else f"{self._prefix}-{tier}-{self._next_id}",
            kind=self.kind, tier=tier,
            domains=tuple(domains), pairs=pairs,
            baseline_p99_ms=comparison.baseline_p99 * 1e3,
            recent_p99_ms=comparison.recent_p99 * 1e3, factor=comparison.ratio,
            p_value=comparison.ks.p_value, ks_statistic=comparison.ks.statistic,
            baseline_samples=len(state.baseline), recent_samples=len(state.recent),
            since=previous.since if previous else now, updated_at=now)

    def _culprits(self, state: _Tier, threshold: float) -> tuple[PairShare, ...]:
        """Pairs with the most recent samples above ``threshold`` beyond their 1 % due."""
        tail = 1.0 - self.config.quantile
        totals: Counter[tuple[str, str]] = Counter()
        slow: Counter[tuple[str, str]] = Counter()
        for seconds, (_, src, dst) in zip(state.recent, state.meta, strict=True):
            totals[src, dst] += 1
            if seconds > threshold:
                slow[src, dst] += 1
        all_slow = sum(slow.values()) or 1
        ranked = sorted(slow, key=lambda p: (-(slow[p] - tail * totals[p]), p))
        return tuple(PairShare(src_domain=p[0], dst_domain=p[1], slow_samples=slow[p],
                               samples=totals[p], share=slow[p] / all_slow)
                     for p in ranked[:self.config.top_pairs] if slow[p] > tail * totals[p])

    @property
    def _prefix(self) -> str:
        return "drift" if self.kind == "transfer_latency_drift" else "handoff-drift"

    # -- queries ---------------------------------------------------------------------
    def alerts(self, *, include_resolved: bool = True) -> list[Alert]:
        """Firing alerts, then (optionally) the remembered resolved ones, oldest first."""
        firing = [s.alert for s in self._tiers.values() if s.alert is not None]
        resolved = list(self._resolved) if include_resolved else []
        return sorted(firing, key=lambda a: a.since) + resolved

    def firing(self, tier: str) -> bool:
        """Whether ``tier`` has a firing alert."""
        state = self._tiers.get(tier)
        return state is not None and state.alert is not None

    def tiers(self) -> list[str]:
        """Tiers seen so far."""
        return list(self._tiers)
