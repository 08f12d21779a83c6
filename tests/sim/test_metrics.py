"""Metric helpers: SLO targets, percentiles, histograms, transfers by tier."""

from __future__ import annotations

import pytest

from sim.engines import Job
from sim.metrics import HISTOGRAM_EDGES, Slo, histogram, percentiles, transfers_by_tier
from tests.sim.builders import request
from topology.tiers import Tier


def test_ttft_target_grows_with_the_prompt() -> None:
    slo = Slo(ttft_base_s=1.0, ttft_per_1k_tokens_s=0.25)
    assert slo.ttft_target_s(0) == 1.0
    assert slo.ttft_target_s(8000) == pytest.approx(3.0)


def test_percentiles_and_empty_input() -> None:
    p = percentiles(list(range(1, 101)))
    assert p.p50 == pytest.approx(50.5) and p.p99 == pytest.approx(99.01) and p.mean == 50.5
    assert percentiles([]).p99 == 0.0


def test_histogram_counts_everything_including_outliers() -> None:
    counts = histogram([0.0, 1e-3, 1e-3, 5.0, 1e6])
    assert sum(counts) == 5
    assert len(counts) == len(HISTOGRAM_EDGES) - 1
    assert counts[0] == 1 and counts[-1] == 1


def _job(tier: Tier, nbytes: int, seconds: float, *, local: bool = False) -> Job:
    return Job(request(), local=local, transfer_tier=int(tier), transfer_bytes=nbytes,
               transfer_s=seconds)


def test_transfers_grouped_nearest_tier_first_and_local_jobs_left_out() -> None:
    jobs = [_job(Tier.CROSS_ZONE, 10, 0.5), _job(Tier.NVLINK, 4, 0.001),
            _job(Tier.NVLINK, 6, 0.003), _job(Tier.NVLINK, 99, 0.0, local=True)]
    tiers = transfers_by_tier(jobs)
    assert [t.tier for t in tiers] == ["nvlink", "cross_zone"]
    assert tiers[0].count == 2 and tiers[0].bytes == 10
    assert tiers[1].latency.p50 == 0.5
