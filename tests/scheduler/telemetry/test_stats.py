"""The Kolmogorov–Smirnov test against known values."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.telemetry.stats import kolmogorov_sf, ks_2samp, ks_statistic, quantile


@pytest.mark.parametrize(("lam", "expected"), [
    # Kolmogorov distribution tables: P(K > λ); 1.224/1.358/1.628 are the classic
    # 10 % / 5 % / 1 % critical values.
    (0.5, 0.963945), (1.0, 0.270000), (1.224, 0.09993), (1.358, 0.05003),
    (1.628, 0.009976), (2.0, 0.000671),
])
def test_kolmogorov_survival_matches_tables(lam: float, expected: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(expected, abs=2e-5)


def test_both_series_agree_around_the_switch() -> None:
    # 2·Σ(-1)^(j-1)·exp(-2j²λ²), summed here independently of the implementation.
    def alternating(lam: float) -> float:
        return 2 * sum((1.0 if j % 2 else -1.0) * math.exp(-2 * j * j * lam * lam)
                       for j in range(1, 200))
    for lam in (0.8, 1.0, 1.17, 1.19, 1.5):
        assert kolmogorov_sf(lam) == pytest.approx(alternating(lam), abs=1e-12)


def test_survival_is_one_at_zero_and_falls() -> None:
    grid = [kolmogorov_sf(x) for x in np.linspace(0, 3, 61)]
    assert grid[0] == 1.0
    assert all(b <= a + 1e-15 for a, b in pairwise(grid))


def test_statistic_and_p_value_by_hand() -> None:
    # Disjoint samples: D = 1; en = sqrt(9/6), λ = (en + 0.12 + 0.11/en)·1 ≈ 1.434560.
    result = ks_2samp([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert result.statistic == 1.0
    assert result.p_value == pytest.approx(kolmogorov_sf(1.4345595), rel=1e-5)
    assert result.p_value == pytest.approx(0.03262, abs=1e-4)
    # Interleaved: the CDFs differ by at most one step of 1/3.
    assert ks_2samp([1.0, 3.0, 5.0], [2.0, 4.0, 6.0]).statistic == pytest.approx(1 / 3)
    # Ties across samples: identical samples are D = 0, p = 1.
    assert ks_2samp([1.0, 1.0, 2.0], [1.0, 1.0, 2.0]) == (0.0, 1.0)
    assert ks_2samp([], [1.0]) == (0.0, 1.0)


def test_p_values_are_roughly_uniform_under_the_null() -> None:
    rng = np.random.default_rng(7)
    p = np.array([ks_2samp(rng.lognormal(0, 1, 120), rng.lognormal(0, 1, 200)).p_value
                  for _ in range(400)])
    assert 0.02 <= float(np.mean(p < 0.05)) <= 0.08
    assert float(np.mean(p < 0.01)) <= 0.025


def test_a_real_shift_gets_a_small_p_value() -> None:
    rng = np.random.default_rng(3)
    assert ks_2samp(rng.normal(0, 1, 200), rng.normal(1, 1, 200)).p_value < 1e-6


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40),
       st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40))
def test_statistic_is_symmetric_and_bounded(a: list[float], b: list[float]) -> None:
    d = ks_statistic(np.array(a), np.array(b))
    assert 0.0 <= d <= 1.0
    assert d == ks_statistic(np.array(b), np.array(a))
    assert 0.0 <= ks_2samp(a, b).p_value <= 1.0


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0.0, 1.0))
def test_quantile_matches_numpy(values: list[float], q: float) -> None:
    array = np.array(values)
    assert quantile(array, q) == pytest.approx(float(np.quantile(array, q)), rel=1e-9, abs=1e-9)
    assert quantile(np.array([]), q) == 0.0
