"""Builders for telemetry tests: samples, synthetic streams, an exposition parser."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.telemetry.calibration import TierFigures
from scheduler.telemetry.samples import TransferSample

#: A pod-level fabric's same_pod figures (as reference_figures gives for small_fabric).
SAME_POD = TierFigures(latency_us=9.0, bandwidth_gb_per_s=50.0)


def sample(**overrides: Any) -> TransferSample:
    """One successful 64 MiB same_pod transfer between two pods."""
    fields: dict[str, Any] = {"tier": "same_pod", "src_domain": "pod-a", "dst_domain": "pod-b",
                              "nbytes": 64 << 20, "seconds": 0.0015, "ok": True, "ts": 1000.0}
    fields.update(overrides)
    return TransferSample(**fields)


def latencies(rng: np.random.Generator, n: int, *, median_s: float = 0.004,
              sigma: float = 0.35, scale: float = 1.0) -> list[float]:
    """Lognormal transfer latencies (a realistic right-skewed shape)."""
    return list(rng.lognormal(np.log(median_s * scale), sigma, size=n))


def stream(rng: np.random.Generator, n: int, *, tier: str = "same_pod", scale: float = 1.0,
           pairs: Sequence[tuple[str, str]] = (("pod-a", "pod-b"),), start_ts: float = 1000.0,
           step_s: float = 0.05) -> Iterator[TransferSample]:
    """``n`` samples spread over ``pairs`` round-robin, ``step_s`` apart."""
    for i, seconds in enumerate(latencies(rng, n, scale=scale)):
        src, dst = pairs[i % len(pairs)]
        yield sample(tier=tier, src_domain=src, dst_domain=dst, seconds=seconds,
                     ts=start_ts + i * step_s)


def sized_stream(rng: np.random.Generator, n: int, *, latency_us: float, gb_per_s: float,
                 noise: float = 0.05, tier: str = "same_pod") -> Iterator[TransferSample]:
    """Samples following ``latency + bytes / bandwidth`` with sizes 4 KiB … 1 GiB."""
    sizes = np.exp(rng.uniform(np.log(4096), np.log(1 << 30), size=n)).astype(np.int64)
    for nbytes in sizes:
        seconds = (latency_us * 1e-6 + nbytes / (gb_per_s * 1e9)) * rng.lognormal(0, noise)
        yield sample(tier=tier, nbytes=int(nbytes), seconds=float(seconds))


@dataclass
class Family:
    """One parsed metric family."""

    help: str = ""
    kind: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str) -> dict[str, str]:
    labels, pos = {}, 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        assert match, f"bad label text at {text[pos:]!r}"
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
    return labels


def _family_of(name: str, families: dict[str, Family]) -> Family:
    for suffix in ("_bucket", "_sum", "_count", ""):
        base = name[: len(name) - len(suffix)] if suffix else name
        if name.endswith(suffix) and base in families:
            return families[base]
    raise AssertionError(f"sample {name} before its TYPE line")


def parse_exposition(text: str) -> dict[str, Family]:
    """Parse the Prometheus text format strictly enough to catch format mistakes."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            families.setdefault(name, Family()).help = _unescape(help_text)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            families.setdefault(name, Family()).kind = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"bad sample line {line!r}"
            name, labels, value = match.groups()
            family = _family_of(name, families)
            family.samples.append((name, _labels(labels or ""), float(value)))
    return families
