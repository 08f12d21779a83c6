"""Calibration: converges to what is measured, inside the clamp, ignoring bad samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.telemetry.calibration import (
    CalibrationConfig,
    Calibrator,
    TierScales,
    reference_figures,
)
from tests.scheduler.telemetry.builders import SAME_POD, sample, sized_stream
from tests.topology.builders import EXPECTED, small_fabric
from topology.distance import DistanceModel
from topology.tiers import Tier


def calibrator(**overrides: object) -> Calibrator:
    """A calibrator with the same_pod reference only."""
    return Calibrator({"same_pod": SAME_POD}, CalibrationConfig(**overrides))


def feed(cal: Calibrator, rng: np.random.Generator, n: int, *, latency_us: float,
         gb_per_s: float, noise: float = 0.05) -> None:
    for s in sized_stream(rng, n, latency_us=latency_us, gb_per_s=gb_per_s, noise=noise):
        cal.add(s)


def test_converges_to_the_measured_figures() -> None:
    cal = calibrator()
    feed(cal, np.random.default_rng(1), 2000, latency_us=15.0, gb_per_s=40.0)
    fig = cal.figures().tiers["same_pod"]
    assert fig.latency_us == pytest.approx(15.0, rel=0.1)
    assert fig.bandwidth_gb_per_s == pytest.approx(40.0, rel=0.05)
    assert fig.latency_factor == pytest.approx(15 / 9, rel=0.1)
    assert fig.bandwidth_factor == pytest.approx(0.8, rel=0.05)
    assert fig.samples == 2000 and fig.fits == 2000 // 32


def test_far_off_measurements_stop_at_the_clamp() -> None:
    cal = calibrator()
    rng = np.random.default_rng(2)
    for _ in range(20):
        feed(cal, rng, 32, latency_us=500.0, gb_per_s=1.0)
        fig = cal.figures().tiers["same_pod"]
        assert 0.25 <= fig.bandwidth_factor <= fig.latency_factor <= 2.0
    fig = cal.figures().tiers["same_pod"]
    assert fig.latency_factor == pytest.approx(2.0, rel=2e-3)
    assert fig.bandwidth_factor == pytest.approx(0.25, rel=2e-3)


def test_one_fit_moves_the_estimate_by_the_smoothing_weight() -> None:
    cal = calibrator(refit_every=64, min_samples=64, smoothing=0.3)
    feed(cal, np.random.default_rng(3), 64, latency_us=9.0, gb_per_s=25.0, noise=0.0)
    fig = cal.figures().tiers["same_pod"]
    assert fig.fits == 1
    assert fig.bandwidth_factor == pytest.approx(0.5 ** 0.3, rel=1e-3)


def test_failures_zero_durations_and_unknown_tiers_are_ignored() -> None:
    cal = calibrator()
    rng = np.random.default_rng(4)
    feed(cal, rng, 256, latency_us=9.0, gb_per_s=50.0)
    before = cal.figures()
    for _ in range(500):
        cal.add(sample(seconds=30.0, ok=False))
        cal.add(sample(seconds=0.0))
        cal.add(sample(tier="cross_zone", seconds=9.0))
    cal.flush()
    assert cal.figures() == before
    assert "cross_zone" not in cal.figures().tiers


def test_outliers_do_not_drag_the_fit() -> None:
    cal = calibrator()
    rng = np.random.default_rng(5)
    for i, s in enumerate(sized_stream(rng, 2000, latency_us=9.0, gb_per_s=50.0)):
        cal.add(s.model_copy(update={"seconds": s.seconds * 20}) if i % 20 == 0 else s)
    fig = cal.figures().tiers["same_pod"]
    assert fig.bandwidth_factor == pytest.approx(1.0, rel=0.05)
    assert fig.latency_factor == pytest.approx(1.0, rel=0.15)


def test_one_transfer_size_fits_bandwidth_only() -> None:
    cal = calibrator()
    for _ in range(320):
        # 64 MiB at 9 µs + 64 MiB / 25 GB/s
        cal.add(sample(nbytes=64 << 20, seconds=9e-6 + (64 << 20) / 25e9))
    fig = cal.figures().tiers["same_pod"]
    assert fig.latency_factor == 1.0
    assert fig.bandwidth_factor == pytest.approx(0.5, rel=0.03)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1 << 32), st.floats(1e-7, 100.0)),
                min_size=16, max_size=200))
def test_factors_never_leave_the_clamp(points: list[tuple[int, float]]) -> None:
    cal = calibrator(refit_every=8)
    for nbytes, seconds in points:
        cal.add(sample(nbytes=nbytes, seconds=seconds))
    cal.flush()
    for fig in cal.figures().tiers.values():
        assert 0.25 <= fig.latency_factor <= 2.0
        assert 0.25 <= fig.bandwidth_factor <= 2.0
        assert math.isfinite(fig.latency_us) and math.isfinite(fig.bandwidth_gb_per_s)


def test_reference_figures_match_the_cost_model() -> None:
    ref = reference_figures(DistanceModel(small_fabric()))
    for tier, (latency_us, gb_per_s, _) in EXPECTED.items():
        assert (ref[tier].latency_us, ref[tier].bandwidth_gb_per_s) == (latency_us, gb_per_s)


def test_scales_apply_to_pair_costs_scalar_and_vectorised() -> None:
    distance = DistanceModel(small_fabric())
    scales = TierScales(factors={"same_pod": (1.5, 0.5), "cross_zone": (2.0, 0.25)})
    assert scales.scale(Tier.SAME_LEAF) == (1.0, 1.0)
    everyone = np.arange(len(distance.names), dtype=np.int64)
    tiers, lat, bw, _ = distance.costs_from(0, everyone)
    new_lat, new_bw = scales.apply_arrays(tiers, lat, bw)
    for b in (1, 8, 40, 100):
        cost = distance.pair(0, b)
        scaled = scales.apply(cost)
        lat_f, bw_f = scales.scale(cost.tier)
        assert scaled.latency_us == pytest.approx(cost.latency_us * lat_f)
        assert scaled.bandwidth_gb_per_s == pytest.approx(cost.bandwidth_gb_per_s * bw_f)
        assert (scaled.tier, scaled.hops) == (cost.tier, cost.hops)
        assert (new_lat[b], new_bw[b]) == pytest.approx((scaled.latency_us,
                                                         scaled.bandwidth_gb_per_s))
    assert {Tier(int(t)).label for t in tiers} >= {"same_pod", "cross_zone"}


def test_calibrated_scales_come_from_figures() -> None:
    cal = calibrator()
    feed(cal, np.random.default_rng(6), 320, latency_us=9.0, gb_per_s=40.0)
    fig = cal.figures().tiers["same_pod"]
    assert cal.scales().scale("same_pod") == (fig.latency_factor, fig.bandwidth_factor)


def test_a_new_reference_keeps_the_fits_of_unchanged_tiers_only() -> None:
    other = SAME_POD.model_copy(update={"bandwidth_gb_per_s": SAME_POD.bandwidth_gb_per_s * 2})
    cal = Calibrator({"same_pod": SAME_POD, "cross_pod": SAME_POD}, CalibrationConfig())
    rng = np.random.default_rng(3)
    for s in sized_stream(rng, 400, latency_us=15.0, gb_per_s=40.0):
        cal.add(s)
        cal.add(s.model_copy(update={"tier": "cross_pod"}))
    learnt = cal.figures().tiers
    assert {"same_pod", "cross_pod"} <= learnt.keys()
    moved = cal.rebased({"same_pod": SAME_POD, "cross_pod": other}).figures().tiers
    assert moved["same_pod"] == learnt["same_pod"]  # unchanged figures: kept
    assert "cross_pod" not in moved  # changed figures: no fit yet
