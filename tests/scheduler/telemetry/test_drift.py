"""Drift alerts: quiet on noise, loud on a shift, naming tier and domains, clearing again."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from scheduler.telemetry.drift import Alert, DriftConfig, DriftDetector
from tests.scheduler.telemetry.builders import latencies, sample, stream
from topology.errors import InputError

PAIRS = (("pod-a", "pod-b"), ("pod-b", "pod-a"), ("pod-c", "pod-d"))


class FakeClock:
    """A settable clock."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def detector(clock: FakeClock | None = None, **overrides: object) -> DriftDetector:
    """A detector with small windows (fast tests), ageing off unless asked for."""
    kw: dict[str, object] = {"baseline_size": 200, "window": 100, "min_samples": 40,
                             "check_every": 10, "max_age_s": None}
    kw.update(overrides)
    return DriftDetector(DriftConfig(**kw), clock=clock or FakeClock())


def feed(d: DriftDetector, rng: np.random.Generator, n: int, **kw: object) -> None:
    for s in stream(rng, n, **kw):  # type: ignore[arg-type]
        d.add(s)


def test_no_alerts_on_samples_from_one_distribution() -> None:
    fired = 0
    for trial in range(150):
        d = detector()
        feed(d, np.random.default_rng(trial), 300, pairs=PAIRS)
        fired += bool(d.alerts())
    # Each trial runs 10 checks at alpha = 0.01 on top of the p99 condition.
    assert fired / 150 <= 0.01


def test_long_stable_stream_with_rolling_baseline_stays_quiet() -> None:
    d = detector()
    feed(d, np.random.default_rng(99), 4000, pairs=PAIRS)
    assert d.alerts() == []


def test_doubled_latency_on_one_pair_fires_naming_tier_and_domains() -> None:
    clock = FakeClock(5000.0)
    d = detector(clock)
    rng = np.random.default_rng(1)
    feed(d, rng, 200, pairs=PAIRS)
    feed(d, rng, 60, pairs=PAIRS[:2])
    feed(d, rng, 60, scale=2.0, pairs=(("pod-e", "pod-f"),))
    [alert] = d.alerts()
    assert alert.state == "firing" and alert.tier == "same_pod"
    assert (alert.pairs[0].src_domain, alert.pairs[0].dst_domain) == ("pod-e", "pod-f")
    assert {"pod-e", "pod-f"} <= set(alert.domains)
    assert alert.factor >= 1.5 and alert.p_value < 0.01
    assert alert.recent_p99_ms > alert.baseline_p99_ms
    assert alert.since == 5000.0
    assert d.firing("same_pod") and not d.firing("same_leaf")


def test_whole_tier_shift_fires_and_resolves_when_latency_returns() -> None:
    clock = FakeClock()
    d = detector(clock)
    rng = np.random.default_rng(2)
    feed(d, rng, 200, pairs=PAIRS)
    feed(d, rng, 100, scale=2.0, pairs=PAIRS)
    [alert] = d.alerts()
    clock.now = 2000.0
    feed(d, rng, 200, pairs=PAIRS)
    [resolved] = d.alerts()
    assert resolved.id == alert.id and resolved.state == "resolved"
    assert resolved.resolved_at == 2000.0 and resolved.since == alert.since
    assert d.alerts(include_resolved=False) == []


def test_hysteresis_between_clear_and_fire_thresholds() -> None:
    held = cleared = 0
    for seed in range(20):
        for level in (1.45, 1.0):
            d = detector(window=200)
            rng = np.random.default_rng(seed)
            feed(d, rng, 200)
            feed(d, rng, 200, scale=2.0)
            assert d.firing("same_pod")
            feed(d, rng, 300, scale=level)
            held += level > 1 and d.firing("same_pod")
            cleared += level == 1.0 and not d.firing("same_pod")
    # 1.45x sits inside the band (clear under 1.2x, fire at 1.5x): the alert holds,
    # bar the odd window whose p99 estimate dips under 1.2x for three checks running.
    assert held >= 18
    assert cleared == 20


def test_moderate_shift_below_the_factor_never_fires() -> None:
    d = detector()
    rng = np.random.default_rng(5)
    feed(d, rng, 200)
    feed(d, rng, 100, scale=1.15)
    assert d.alerts() == []


def test_minimum_sample_guard() -> None:
    d = detector()
    rng = np.random.default_rng(6)
    feed(d, rng, 150)  # baseline not complete: only 150 of 200 …
    d.evaluate()
    feed(d, rng, 39, scale=3.0)  # … then 50 to finish it, nothing in the recent window
    d.evaluate()
    assert d.alerts() == []
    small = detector(baseline_size=60, min_samples=60, window=100)
    feed(small, rng, 60)
    feed(small, rng, 59, scale=3.0)
    small.evaluate()
    assert small.alerts() == []
    feed(small, rng, 1, scale=3.0)
    small.evaluate()
    assert small.firing("same_pod")


def test_failed_transfers_are_ignored() -> None:
    d = detector()
    rng = np.random.default_rng(7)
    feed(d, rng, 200)
    for seconds in latencies(rng, 100, scale=5.0):
        d.add(sample(seconds=seconds, ok=False))
    d.evaluate()
    assert d.alerts() == []


def test_explicit_frozen_baseline() -> None:
    d = detector()
    rng = np.random.default_rng(8)
    d.set_baseline("same_leaf", latencies(rng, 200))
    feed(d, rng, 100, tier="same_leaf", scale=2.0)
    [alert] = d.alerts()
    assert alert.tier == "same_leaf" and alert.baseline_samples == 200
    with pytest.raises(InputError, match="at least"):
        d.set_baseline("same_leaf", [0.1])
    with pytest.raises(InputError, match="unknown tier"):
        d.set_baseline("same_rack", latencies(rng, 200))


def test_stale_alert_resolves_when_its_samples_age_out() -> None:
    clock = FakeClock(1000.0)
    d = detector(clock, max_age_s=60.0)
    rng = np.random.default_rng(9)
    feed(d, rng, 200, start_ts=1000.0, step_s=0.01)
    feed(d, rng, 100, scale=2.0, start_ts=1002.0, step_s=0.01)
    clock.now = 1003.0
    assert d.firing("same_pod")
    clock.now = 1100.0
    d.evaluate()
    assert not d.firing("same_pod")
    assert d.alerts()[0].state == "resolved"


def test_alerts_are_json() -> None:
    d = detector()
    rng = np.random.default_rng(10)
    feed(d, rng, 200, pairs=PAIRS)
    feed(d, rng, 100, scale=3.0, pairs=PAIRS)
    [alert] = d.alerts()
    data = json.loads(alert.model_dump_json())
    assert {"id", "tier", "domains", "baseline_p99_ms", "recent_p99_ms", "factor", "p_value",
            "since", "state"} <= set(data)
    assert Alert.model_validate(data) == alert


@pytest.mark.parametrize("overrides", [{"clear_factor": 1.6}, {"min_samples": 500},
                                       {"alpha": 0.0}])
def test_inconsistent_settings_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        DriftConfig(**overrides)


def test_rechecking_the_same_window_is_not_new_evidence() -> None:
    d = detector(check_every=10_000)  # checks only on evaluate()
    rng = np.random.default_rng(12)
    feed(d, rng, 200)
    feed(d, rng, 100, scale=2.0)
    d.evaluate()
    assert d.firing("same_pod")
    feed(d, rng, 100)  # the window is back to normal: calm check 1 of 3 …
    for _ in range(10):  # … and re-checking it without new samples counts for nothing
        d.evaluate()
    assert d.firing("same_pod")
    for _ in range(2):  # two more checks, each over a new sample
        feed(d, rng, 1)
        d.evaluate()
    assert not d.firing("same_pod")
