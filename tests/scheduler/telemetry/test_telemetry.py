"""The Telemetry facade and building samples from the planner's reports."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from scheduler.telemetry import (
    DomainMapper,
    Telemetry,
    TelemetryConfig,
    TransferSample,
    inflight_by_link,
    reference_figures,
    sample_from_record,
    sample_from_report,
)
from scheduler.telemetry.drift import DriftConfig
from scheduler.transfer.plan import TransferRecord, TransferReport
from tests.scheduler.telemetry.builders import parse_exposition, sample, stream
from tests.scheduler.transfer.builders import plan
from tests.topology.builders import small_fabric
from topology.distance import DistanceModel
from topology.errors import InputError


def telemetry(**overrides: object) -> Telemetry:
    """A facade over small_fabric's reference figures with a fixed clock."""
    config = TelemetryConfig(**overrides)
    return Telemetry(config, reference=reference_figures(DistanceModel(small_fabric())),
                     clock=lambda: 1000.0)


def test_render_has_every_family_with_help_and_type() -> None:
    tel = telemetry()
    tel.record_transfer(sample())
    tel.record_transfer(sample(ok=False, seconds=30.0))
    tel.observe_routing(120e-6)
    tel.observe_placement(2.5, method="cpsat")
    tel.observe_prefix(hit_blocks=3, total_blocks=8)
    tel.set_link_inflight({"leaf:z0-p0-rail0:up": 2.6e9}, {"leaf:z0-p0-rail0:up": 2})
    families = parse_exposition(tel.render_prometheus())
    kinds = {name: f.kind for name, f in families.items()}
    assert kinds == {
        "toposched_transfer_latency_seconds": "histogram",
        "toposched_transfer_bandwidth_bytes_per_second": "histogram",
        "toposched_transfers_total": "counter",
        "toposched_transfer_bytes_total": "counter",
        "toposched_routing_decision_seconds": "histogram",
        "toposched_placement_solve_seconds": "histogram",
        "toposched_prefix_cache_hit_blocks_total": "counter",
        "toposched_prefix_cache_lookup_blocks_total": "counter",
        "toposched_link_inflight_bytes": "gauge",
        "toposched_link_inflight_transfers": "gauge",
        "toposched_alerts_firing": "gauge",
        "toposched_calibration_factor": "gauge",
        "toposched_telemetry_label_overflow_total": "counter",
        "toposched_gateway_phase_seconds": "histogram",
        "toposched_gateway_requests_total": "counter",
        "toposched_gateway_kv_bytes_total": "counter",
        "toposched_gateway_pulls_total": "counter",
        "toposched_gateway_pull_seconds": "histogram",
        "toposched_gateway_pull_overhead_seconds": "gauge",
    }
    assert all(f.help for f in families.values())
    outcomes = {s[1]["outcome"]: s[2] for s in families["toposched_transfers_total"].samples}
    assert outcomes == {"ok": 1, "failed": 1}
    latency = families["toposched_transfer_latency_seconds"].samples
    assert {s[1]["src_domain"] for s in latency} == {"pod-a"}
    count = [s for s in latency if s[0].endswith("_count")]
    assert count == [("toposched_transfer_latency_seconds_count",
                      {"tier": "same_pod", "src_domain": "pod-a", "dst_domain": "pod-b"}, 1)]
    bandwidth = families["toposched_transfer_bandwidth_bytes_per_second"].samples
    assert [s[2] for s in bandwidth if s[0].endswith("_sum")] == [pytest.approx((64 << 20)
                                                                                / 0.0015)]
    assert tel.prefix_hit_ratio() == 3 / 8


def test_domain_pairs_beyond_the_budget_are_labelled_other() -> None:
    tel = telemetry(max_domain_pairs=5)
    for i in range(50):
        for tier in ("same_pod", "same_zone"):
            tel.record_transfer(sample(tier=tier, src_domain=f"pod-{i}", dst_domain="pod-x"))
    families = parse_exposition(tel.render_prometheus())
    series = {(s[1]["tier"], s[1]["src_domain"]) for s in
              families["toposched_transfer_latency_seconds"].samples}
    assert len({src for _, src in series}) == 6  # 5 pairs + other
    assert ("same_zone", "other") in series and ("same_pod", "other") in series
    overflow = families["toposched_telemetry_label_overflow_total"].samples
    assert overflow[0][2] == 2 * 45


def test_inflight_by_link_sums_bytes_and_counts_transfers() -> None:
    links = ("nic:h0/mlx5_0:tx", "leaf:l0:up")
    nbytes, count = inflight_by_link([(links, 100.0), (links[1:], 50.0), ((), 7.0)])
    assert nbytes == {"nic:h0/mlx5_0:tx": 100.0, "leaf:l0:up": 150.0}
    assert count == {"nic:h0/mlx5_0:tx": 1, "leaf:l0:up": 2}


def test_link_gauges_follow_the_latest_snapshot() -> None:
    tel = telemetry()
    tel.set_link_inflight({"a": 1.0, "b": 2.0})
    tel.set_link_inflight({"b": 5.0})
    samples = parse_exposition(tel.render_prometheus())["toposched_link_inflight_bytes"].samples
    assert samples == [("toposched_link_inflight_bytes", {"link": "b"}, 5.0)]


def test_prefix_lookup_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="within"):
        telemetry().observe_prefix(hit_blocks=5, total_blocks=4)
    assert telemetry().prefix_hit_ratio() == 0.0


def test_alerts_and_their_gauge_through_the_facade() -> None:
    drift = DriftConfig(baseline_size=200, window=100, min_samples=40, check_every=10,
                        max_age_s=None)
    tel = telemetry(drift=drift)
    rng = np.random.default_rng(11)
    tel.record_transfers(stream(rng, 200))
    tel.record_transfers(stream(rng, 100, scale=2.5, pairs=(("pod-c", "pod-d"),)))
    [alert] = tel.alerts()
    assert alert.tier == "same_pod" and alert.domains == ("pod-c", "pod-d")
    assert alert.since == 1000.0
    gauge = parse_exposition(tel.render_prometheus())["toposched_alerts_firing"].samples
    assert gauge == [("toposched_alerts_firing",
                      {"alert": "transfer_latency_drift", "tier": "same_pod"}, 1.0)]


def test_calibration_through_the_facade() -> None:
    tel = telemetry()
    for _ in range(40):
        tel.record_transfer(sample(nbytes=64 << 20, seconds=9e-6 + (64 << 20) / 25e9))
    scales = tel.scales()
    assert scales.scale("same_pod")[1] < 1.0
    factors = parse_exposition(tel.render_prometheus())["toposched_calibration_factor"]
    assert {s[1]["figure"] for s in factors.samples} == {"latency", "bandwidth"}


def test_sample_validation() -> None:
    with pytest.raises(ValidationError, match="unknown tier"):
        sample(tier="same_rack")
    with pytest.raises(ValidationError):
        sample(seconds=-1.0)
    assert sample(nbytes=10, seconds=0.0).bytes_per_s == 0.0


def report(**overrides: object) -> TransferReport:
    """The initiator's successful report of a 4-block transfer."""
    fields: dict[str, object] = {"plan_id": "req-1", "worker": "decode-0", "role": "initiator",
                                 "outcome": "ok", "bytes": 16384, "descriptors": 2,
                                 "duration_s": 0.002, "gb_per_s": 0.008, "tier": "same_leaf"}
    fields.update(overrides)
    return TransferReport(**fields)


def test_sample_from_report_and_record() -> None:
    domains = {"prefill-0": "pod-a", "decode-0": "pod-b"}
    made = sample_from_report(report(), src_domain="pod-a", dst_domain="pod-b", ts=5.0)
    assert made == TransferSample(tier="same_leaf", src_domain="pod-a", dst_domain="pod-b",
                                  nbytes=16384, seconds=0.002, ok=True, ts=5.0)
    record = TransferRecord(plan=plan(), state="done", finished_at=7.0,
                            reports=(report(role="target", duration_s=0.5), report()))
    from_record = sample_from_record(record, domains.__getitem__)
    assert from_record == made.model_copy(update={"ts": 7.0})
    assert sample_from_record(TransferRecord(plan=plan()), domains.__getitem__) is None


def test_sample_from_failed_record_and_missing_tier() -> None:
    domains = {"prefill-0": "pod-a", "decode-0": "pod-b"}
    record = TransferRecord(plan=plan(), state="failed", finished_at=7.0,
                            reports=(report(tier="", outcome="timeout"),))
    made = sample_from_record(record, domains.__getitem__)
    assert made is not None and not made.ok
    assert made.tier == record.plan.hints.tier
    with pytest.raises(InputError, match="names no tier"):
        sample_from_report(report(tier=""), src_domain="a", dst_domain="b")


@pytest.mark.parametrize(("level", "expected"), [("rack", "z1-p1-r1"), ("pod", "z1-p1"),
                                                 ("zone", "z1")])
def test_domain_mapper_levels(level: str, expected: str) -> None:
    distance = DistanceModel(small_fabric())
    mapper = DomainMapper(distance, level)  # type: ignore[arg-type]
    assert mapper.of_gpu(distance.names[-1]) == expected
    assert mapper.of_gpu(distance.names[-1]) == expected  # cached


def test_domain_mapper_refuses_unknown_levels() -> None:
    with pytest.raises(InputError, match="domain level"):
        DomainMapper(DistanceModel(small_fabric()), "host")  # type: ignore[arg-type]
