"""The metrics registry and its Prometheus text exposition."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.telemetry.metrics import (
    Counter,
    Gauge,
    Histogram,
    Registry,
    escape_label_value,
    format_value,
)
from tests.scheduler.telemetry.builders import parse_exposition
from topology.errors import InputError


def histogram(**overrides: object) -> Histogram:
    """A two-label latency histogram with three buckets."""
    kw: dict[str, object] = {"buckets": (0.001, 0.01, 0.1), "max_series": 100}
    kw.update(overrides)
    return Histogram("t_latency_seconds", "Latency.", ("tier", "pair"), **kw)  # type: ignore[arg-type]


def test_histogram_exposition_parses_back_with_cumulative_buckets() -> None:
    h = histogram()
    for value in (0.0005, 0.001, 0.005, 0.05, 5.0):
        h.observe(("same_pod", "a>b"), value)
    registry = Registry()
    registry.add(h)
    family = parse_exposition(registry.render())["t_latency_seconds"]
    assert family.kind == "histogram" and family.help == "Latency."
    buckets = {s[1]["le"]: s[2] for s in family.samples if s[0].endswith("_bucket")}
    # 0.001 sits on a bound: ``le`` is inclusive.
    assert buckets == {"0.001": 2, "0.01": 3, "0.1": 4, "+Inf": 5}
    totals = {s[0]: s[2] for s in family.samples if not s[0].endswith("_bucket")}
    assert totals["t_latency_seconds_count"] == 5
    assert totals["t_latency_seconds_sum"] == pytest.approx(5.0565)
    assert all(s[1]["tier"] == "same_pod" and s[1]["pair"] == "a>b" for s in family.samples)


def test_label_values_are_escaped_and_round_trip() -> None:
    nasty = 'rack "7"\\east\nrow'
    assert escape_label_value(nasty) == 'rack \\"7\\"\\\\east\\nrow'
    registry = Registry()
    c = registry.add(Counter("t_transfers_total", "Help with a \\ and\na newline.", ("d",)))
    c.inc((nasty,), 3)
    text = registry.render()
    assert "\nrow" not in text.replace("\\n", "")  # no raw newline inside a sample line
    family = parse_exposition(text)["t_transfers_total"]
    assert family.help == "Help with a \\ and\na newline."
    assert family.samples == [("t_transfers_total", {"d": nasty}, 3.0)]


def test_cardinality_is_bounded_by_folding_into_other() -> None:
    h = histogram(max_series=5)
    for i in range(50):
        h.observe(("same_pod", f"pair-{i}"), 0.002)
    assert h.series_count() == 5
    assert h.count(("other", "other")) == 46
    assert h.folded == 46
    assert h.count(("same_pod", "pair-0")) == 1


def test_gauge_replace_drops_missing_series_and_folds_overflow_by_sum() -> None:
    g = Gauge("t_link_bytes", "Bytes.", ("link",), max_series=3)
    g.replace([(("a",), 1.0), (("b",), 2.0), (("c",), 4.0), (("d",), 8.0)])
    assert g.value(("a",)) == 1.0 and g.value(("other",)) == 12.0
    g.replace([(("b",), 5.0)])
    assert g.value(("a",)) == 0.0 and g.value(("b",)) == 5.0


def test_counter_rejects_decrease_and_bad_names() -> None:
    with pytest.raises(InputError):
        Counter("t_x_total", "x").inc((), -1)
    with pytest.raises(InputError, match="_total"):
        Counter("t_x", "x")
    with pytest.raises(InputError, match="metric name"):
        Gauge("bad-name", "x")
    with pytest.raises(InputError, match="reserved"):
        Histogram("t_h", "x", ("le",))
    with pytest.raises(InputError, match="increasing"):
        Histogram("t_h", "x", buckets=(1.0, 1.0))
    with pytest.raises(InputError, match="labels"):
        Counter("t_y_total", "y", ("a", "b")).inc(("only-one",))


def test_registry_refuses_duplicate_names() -> None:
    registry = Registry()
    registry.add(Gauge("t_g", "g"))
    with pytest.raises(InputError, match="already"):
        registry.add(Gauge("t_g", "g"))


def test_value_formatting() -> None:
    assert [format_value(v) for v in (3.0, 0.25, math.inf, -math.inf, math.nan, 1e-05)] == \
        ["3", "0.25", "+Inf", "-Inf", "NaN", "1e-05"]


@given(st.lists(st.floats(min_value=0, max_value=1e3, allow_nan=False), max_size=60))
def test_histogram_buckets_are_monotone_and_end_at_count(values: list[float]) -> None:
    h = histogram()
    for v in values:
        h.observe(("t", "p"), v)
    registry = Registry()
    registry.add(h)
    family = parse_exposition(registry.render())["t_latency_seconds"]
    counts = [s[2] for s in family.samples if s[0].endswith("_bucket")]
    assert counts == sorted(counts)
    assert counts[-1:] == ([len(values)] if values else [])
    for bound, count in zip((0.001, 0.01, 0.1), counts, strict=False):
        assert count == sum(v <= bound for v in values)
