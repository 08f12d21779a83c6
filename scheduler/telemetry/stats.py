"""Two-sample Kolmogorov–Smirnov test and quantiles, in numpy (no scipy dependency).

The p-value is the asymptotic one with Stephens' small-sample correction (as in
Numerical Recipes' ``probks``): with ``en = sqrt(n·m / (n + m))``,
``p = Q((en + 0.12 + 0.11 / en) · D)`` where ``Q`` is the Kolmogorov survival function
``Q(λ) = 2 Σ_{j≥1} (-1)^{j-1} exp(-2 j² λ²)``. For small ``λ`` that series converges
slowly, so there the equivalent Jacobi-theta form
``Q(λ) = 1 - sqrt(2π)/λ · Σ_{j≥1} exp(-(2j-1)² π² / (8 λ²))`` is used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_SWITCH = 1.18  # both series need < 10 terms for 1e-16 accuracy on their side of it


class KsResult(NamedTuple):
    """Statistic ``D`` (largest gap between the two empirical CDFs) and its p-value."""

    statistic: float
    p_value: float


def kolmogorov_sf(lam: float) -> float:
    """``Q(λ) = P(K > λ)`` for the Kolmogorov distribution ``K``."""
    if lam < 0.05:  # the theta terms underflow to 0 well before this
        return 1.0
    # Plain floats: both sums need under ten terms, where numpy's call overhead dominates.
    if lam < _SWITCH:
        c = -(math.pi**2) / (8 * lam * lam)
        theta = sum(math.exp((2 * k - 1) ** 2 * c) for k in range(1, 8))
        return _unit(1.0 - math.sqrt(2 * math.pi) / lam * theta)
    c = -2.0 * lam * lam
    total = sum((1.0 if j % 2 else -1.0) * math.exp(j * j * c) for j in range(1, 20))
    return _unit(2.0 * total)


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def ks_statistic(a: FloatArray, b: FloatArray, *, presorted: bool = False) -> float:
    """``sup_x |F_a(x) - F_b(x)|`` over the two samples (ties handled exactly)."""
    if not presorted:
        a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_2samp(a: FloatArray | list[float], b: FloatArray | list[float], *,
             presorted: bool = False) -> KsResult:
    """Two-sample KS test of ``a`` against ``b`` (two-sided, asymptotic p-value).

    ``presorted``: both inputs are already sorted float arrays (skips two sorts).
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size == 0 or xb.size == 0:
        return KsResult(0.0, 1.0)
    d = ks_statistic(xa, xb, presorted=presorted)
    en = math.sqrt(xa.size * xb.size / (xa.size + xb.size))
    return KsResult(d, kolmogorov_sf((en + 0.12 + 0.11 / en) * d))


def quantile(values: FloatArray, q: float, *, presorted: bool = False) -> float:
    """The ``q`` quantile with linear interpolation (numpy's default), 0 for no values."""
    n = values.size
    if n == 0:
        return 0.0
    ordered = values if presorted else np.sort(values)
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return float(ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo]))
