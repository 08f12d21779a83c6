"""A small metrics registry with Prometheus text exposition (format 0.0.4).

Self-written on purpose: the scheduler needs three metric kinds and one output
format, and keeping ``prometheus_client`` out keeps the library free of global
registries and import-time state. Every family bounds its label cardinality: past
``max_series`` distinct label sets, new label sets are folded into one series whose
label values are all ``overflow_value`` (default ``"other"``) and the fold is
counted, so a misbehaving label source cannot grow memory or scrape size without
limit.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Literal, TypeVar

from topology.errors import InputError

MetricKind = Literal["counter", "gauge", "histogram"]
LabelValues = tuple[str, ...]

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Latency buckets (seconds): 10 µs … 100 s, roughly ×2.5 apart.
LATENCY_BUCKETS: tuple[float, ...] = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)
#: Bandwidth buckets (bytes/s): 10 MB/s … 2 TB/s.
BANDWIDTH_BUCKETS: tuple[float, ...] = (
    1e7, 1e8, 5e8, 1e9, 2.5e9, 5e9, 1e10, 2.5e10, 5e10, 1e11, 2.5e11, 5e11, 1e12, 2e12)


def escape_label_value(value: str) -> str:
    """Escape a label value for the text format: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Escape HELP text: backslash and newline (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it (``+Inf``, ``NaN``, integers without ``.0``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _check_name(name: str, pattern: re.Pattern[str], what: str) -> None:
    if not pattern.match(name):
        raise InputError(f"invalid {what} {name!r}: expected {pattern.pattern}")


class _Family(ABC):
    """Shared bookkeeping of one metric family: name, help, labels, cardinality bound."""

    kind: MetricKind

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), *,
                 max_series: int = 1000, overflow_value: str = "other") -> None:
        _check_name(name, _NAME, "metric name")
        for label in labels:
            _check_name(label, _LABEL, "label name")
            if label.startswith("__") or label == "le":
                raise InputError(f"reserved label name {label!r} in {name}")
        if max_series < 1:
            raise InputError(f"max_series of {name} must be at least 1")
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.max_series = max_series
        self._overflow: LabelValues = tuple(overflow_value for _ in self.labels)
        self.folded = 0

    def _key(self, values: LabelValues, known: Mapping[LabelValues, object]) -> LabelValues:
        """The series key for ``values``, folded into the overflow series past the bound."""
        if values in known:
            return values
        if len(values) != len(self.labels):
            raise InputError(f"{self.name} takes labels {self.labels}, got {len(values)} values")
        # One slot is kept back for the overflow series itself.
        if len(known) >= self.max_series - 1 and self.labels:
            self.folded += 1
            return self._overflow
        return values

    def _label_text(self, values: LabelValues, extra: str = "") -> str:
        parts = [f'{k}="{escape_label_value(v)}"' for k, v in zip(self.labels, values,
                                                                     strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def header(self) -> Iterator[str]:
        """The HELP and TYPE lines."""
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"

    @abstractmethod
    def lines(self) -> Iterator[str]:
        """Every line of this family in the text format."""


class Counter(_Family):
    """A monotonically increasing count per label set."""

    kind: MetricKind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), *,
                 max_series: int = 1000, overflow_value: str = "other") -> None:
        if not name.endswith("_total"):
            raise InputError(f"counter {name!r} must end in _total")
        super().__init__(name, help_text, labels, max_series=max_series,
                         overflow_value=overflow_value)
        self._values: dict[LabelValues, float] = {}

    def inc(self, values: LabelValues = (), amount: float = 1.0) -> None:
        """Add ``amount`` (never negative) to the series of ``values``."""
        if not amount >= 0:  # also refuses NaN
            raise InputError(f"{self.name} can only increase (got {amount})")
        key = self._key(values, self._values)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, values: LabelValues = ()) -> float:
        """Current value of one series (0 when never incremented)."""
        return self._values.get(values, 0.0)

    def series(self) -> dict[LabelValues, float]:
        """Every series' value by label values (a copy)."""
        return dict(self._values)

    def lines(self) -> Iterator[str]:
        """Every line of this family in the text format."""
        yield from self.header()
        for values, total in sorted(self._values.items()):
            yield f"{self.name}{self._label_text(values)} {format_value(total)}"


class Gauge(_Family):
    """A value per label set that goes up and down; :meth:`replace` swaps all series."""

    kind: MetricKind = "gauge"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), *,
                 max_series: int = 1000, overflow_value: str = "other") -> None:
        super().__init__(name, help_text, labels, max_series=max_series,
                         overflow_value=overflow_value)
        self._values: dict[LabelValues, float] = {}

    def set(self, values: LabelValues, value: float) -> None:
        """Set one series (an overflowed label set adds to the overflow series)."""
        key = self._key(values, self._values)
        if key == self._overflow and values != key:
            value += self._values.get(key, 0.0)
        self._values[key] = value

    def replace(self, series: Iterable[tuple[LabelValues, float]]) -> None:
        """Drop every series and set the given ones (for snapshots like link load)."""
        self._values = {}
        for values, value in series:
            self.set(values, value)

    def value(self, values: LabelValues = ()) -> float:
        """Current value of one series (0 when never set)."""
        return self._values.get(values, 0.0)

    def lines(self) -> Iterator[str]:
        """Every line of this family in the text format."""
        yield from self.header()
        for values, value in sorted(self._values.items()):
            yield f"{self.name}{self._label_text(values)} {format_value(value)}"


class _HistogramSeries:
    """Per-bucket counts (not cumulative: cumulated at render), sum and count."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self, size: int) -> None:
        self.buckets = [0] * size
        self.sum = 0.0
        self.count = 0


class Histogram(_Family):
    """Observations counted into fixed upper bounds (``le``), with sum and count."""

    kind: MetricKind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (), *,
                 buckets: Sequence[float] = LATENCY_BUCKETS, max_series: int = 1000,
                 overflow_value: str = "other") -> None:
        super().__init__(name, help_text, labels, max_series=max_series,
                         overflow_value=overflow_value)
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or any(b2 <= b1 for b1, b2 in pairwise(bounds)):
            raise InputError(f"buckets of {name} must be non-empty and strictly increasing")
        self.bounds = tuple(bounds)
        self._series: dict[LabelValues, _HistogramSeries] = {}

    def observe(self, values: LabelValues, value: float) -> None:
        """Count one observation (NaN is ignored: it has no bucket)."""
        if value != value:
            return
        series = self._series.get(values)
        if series is None:
            key = self._key(values, self._series)
            series = self._series.setdefault(key, _HistogramSeries(len(self.bounds) + 1))
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        series.buckets[bisect_left(self.bounds, value)] += 1
        series.sum += value
        series.count += 1

    def count(self, values: LabelValues = ()) -> int:
        """Observations of one series."""
        series = self._series.get(values)
        return series.count if series else 0

    def series_count(self) -> int:
        """Distinct label sets held (the overflow series included)."""
        return len(self._series)

    def series(self) -> list[tuple[LabelValues, tuple[int, ...], float, int]]:
        """Every series as (label values, per-bucket counts, sum, count), sorted as
        rendered; the counts are per bucket (not cumulative), the last one for ``+Inf``."""
        return [(values, tuple(s.buckets), s.sum, s.count)
                for values, s in sorted(self._series.items())]

    def lines(self) -> Iterator[str]:
        """Every line of this family in the text format."""
        yield from self.header()
        les = [*(f'le="{format_value(b)}"' for b in self.bounds), 'le="+Inf"']
        for values, series in sorted(self._series.items()):
            # The label text is built once per series, not once per bucket line.
            labels = self._label_text(values)
            prefix = f"{self.name}_bucket{labels[:-1]}," if labels else f"{self.name}_bucket{{"
            running = 0
            for le, n in zip(les, series.buckets, strict=True):
                running += n
                yield f"{prefix}{le}}} {running}"
            yield f"{self.name}_sum{labels} {format_value(series.sum)}"
            yield f"{self.name}_count{labels} {series.count}"


Family = Counter | Gauge | Histogram
F = TypeVar("F", Counter, Gauge, Histogram)


class Registry:
    """An ordered set of metric families rendered together."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def add(self, family: F) -> F:
        """Register a family; a second family of the same name is an error."""
        if family.name in self._families:
            raise InputError(f"metric {family.name!r} is already registered")
        self._families[family.name] = family
        return family

    def families(self) -> list[Family]:
        """Families in registration order."""
        return list(self._families.values())

    def render(self) -> str:
        """The whole registry in the Prometheus text format (ends with a newline)."""
        lines: list[str] = []
        for family in self._families.values():
            lines.extend(family.lines())
        return "\n".join(lines) + "\n" if lines else ""
