"""Load and NIXL figures from an engine's Prometheus ``/metrics`` text.

Parsed with ``prometheus_client``'s text parser. Only the families read here are
handed to it: an engine exposes ~400 lines (histogram buckets mostly), and dropping the
others by name first makes a scrape several times cheaper. Values summed over the
``engine`` label (one series per data-parallel engine in one server).

Names per engine kind, first match wins (renames have broken routers before, so every
signal lists the names in use, newest first, and :class:`EngineMetrics` says which one
was found):

=============  ===============================================  =======================
signal         vLLM                                             SGLang
=============  ===============================================  =======================
running        ``vllm:num_requests_running``                    ``sglang:num_running_reqs``
waiting        ``vllm:num_requests_waiting``                    ``sglang:num_queue_reqs``
kv_usage       ``vllm:kv_cache_usage_perc``,                    ``sglang:token_usage``
               ``vllm:gpu_cache_usage_perc`` (deprecated)
cache_config   ``vllm:cache_config_info{block_size,             ``sglang:cache_config_info
               num_gpu_blocks}``                                {page_size}``
capacity       (``num_gpu_blocks`` label)                       ``sglang:max_total_num_tokens``
prompt_tokens  ``vllm:request_prompt_tokens`` (histogram)       ``sglang:prompt_tokens``
                                                                / ``sglang:num_requests``
=============  ===============================================  =======================

vLLM's NixlConnector figures (decode side): ``vllm:nixl_xfer_time_seconds`` and
``vllm:nixl_bytes_transferred`` (histograms), ``vllm:nixl_num_failed_transfers`` and
``vllm:nixl_num_kv_expired_reqs`` (counters). All are running totals; the caller takes
differences between scrapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

#: Metric names per signal and engine kind, newest first.
NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        "cache_config": ("vllm:cache_config_info",),
        "prompt_tokens": ("vllm:request_prompt_tokens",),
        "nixl_xfer_time": ("vllm:nixl_xfer_time_seconds",),
        "nixl_bytes": ("vllm:nixl_bytes_transferred",),
        "nixl_failed": ("vllm:nixl_num_failed_transfers",),
        "nixl_expired": ("vllm:nixl_num_kv_expired_reqs",),
    },
    "sglang": {
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv_usage": ("sglang:token_usage",),
        "cache_config": ("sglang:cache_config_info",),
        "capacity_tokens": ("sglang:max_total_num_tokens",),
        "prompt_tokens": ("sglang:prompt_tokens",),
        "requests": ("sglang:num_requests",),
    },
}
NAMES["fake"] = NAMES["vllm"]
#: Label naming the block size in each engine's cache_config_info.
_BLOCK_LABELS = ("block_size", "page_size")


@dataclass(frozen=True)
class NixlTotals:
    """Running totals of an engine's NIXL transfers (decode side)."""

    transfers: float = 0.0
    seconds: float = 0.0
    bytes: float = 0.0
    failed: float = 0.0
    expired: float = 0.0


@dataclass(frozen=True)
class EngineMetrics:
    """What one scrape found; ``None`` where the engine exposes no such figure.

    ``found`` maps each signal to the metric name that supplied it (``kv_usage`` →
    ``vllm:gpu_cache_usage_perc`` on an engine that still uses the old name).
    """

    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    block_size: int | None = None
    num_blocks: int | None = None
    mean_prompt_tokens: float | None = None
    nixl: NixlTotals | None = None
    found: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> tuple[str, ...]:
        """Load signals the engine did not expose (under any known name)."""
        return tuple(s for s in ("running", "waiting", "kv_usage") if s not in self.found)


@dataclass
class _Family:
    kind: str
    samples: list[tuple[str, dict[str, str], float]]


def _wanted(engine: str) -> dict[str, str]:
    """Metric family name → signal, for every name listed for ``engine``."""
    return {name: signal for signal, names in NAMES[engine].items() for name in names}


def _prefilter(text: str, wanted: Iterable[str]) -> str:
    """Only the lines of the wanted families (with their # TYPE / # HELP lines)."""
    prefixes = tuple(wanted)
    comments = tuple(f"# {tag} {name}" for name in prefixes for tag in ("TYPE", "HELP"))
    return "\n".join(line for line in text.splitlines()
                     if line.startswith(prefixes) or line.startswith(comments)) + "\n"


def _families(text: str, wanted: dict[str, str]) -> dict[str, _Family]:
    found: dict[str, _Family] = {}
    for family in text_string_to_metric_families(_prefilter(text, wanted)):
        name = family.name
        if name not in wanted and name.endswith("_total"):
            name = name[:-6]
        if name in wanted:
            found[name] = _Family(family.type, [(s.name, dict(s.labels), s.value)
                                               for s in family.samples])
    return found


def parse_metrics(text: str, engine: str) -> EngineMetrics:
    """Read the load, cache-config and NIXL figures of ``engine`` (``vllm``, ``sglang``,
    ``fake``) from Prometheus exposition text. Raises ``ValueError`` for text that is
    not Prometheus exposition format."""
    wanted = _wanted(engine)
    families = _families(text, wanted)
    found = {signal: name for signal, names in NAMES[engine].items()
             if (name := next((n for n in names if n in families), None)) is not None}
    pick = {signal: families[name] for signal, name in found.items()}
    block_size, num_blocks = _cache_config(pick.get("cache_config"))
    if num_blocks is None and block_size and "capacity_tokens" in pick:
        num_blocks = int(_total(pick["capacity_tokens"]) // block_size)
    return EngineMetrics(
        running=_gauge(pick.get("running")), waiting=_gauge(pick.get("waiting")),
        kv_usage=_usage(pick.get("kv_usage")), block_size=block_size, num_blocks=num_blocks,
        mean_prompt_tokens=_mean_prompt(pick), nixl=_nixl(pick), found=found)


def _gauge(family: _Family | None) -> float | None:
    return None if family is None else _total(family)


def _total(family: _Family, suffix: str = "") -> float:
    """Sum of the family's samples named ``<family><suffix>`` (over engines)."""
    values = [value for name, _, value in family.samples
              if (suffix == "" and not name.endswith(("_bucket", "_created")))
              or (suffix != "" and name.endswith(suffix))]
    return float(sum(v for v in values if math.isfinite(v)))


def _usage(family: _Family | None) -> float | None:
    """KV usage in [0, 1]: the mean over engines (each reports its own fraction)."""
    if family is None or not family.samples:
        return None
    values = [value for _, _, value in family.samples if math.isfinite(value)]
    return min(max(sum(values) / len(values), 0.0), 1.0) if values else None


def _cache_config(family: _Family | None) -> tuple[int | None, int | None]:
    """(block size, blocks summed over engines) from a cache_config_info family."""
    if family is None:
        return None, None
    sizes, blocks = set(), 0
    for _, labels, _ in family.samples:
        size = next((labels[key] for key in _BLOCK_LABELS if key in labels), None)
        if size is not None and size.isdigit():
            sizes.add(int(size))
        count = labels.get("num_gpu_blocks", "")
        blocks += int(count) if count.isdigit() else 0
    return (min(sizes) if sizes else None), (blocks or None)


def _mean_prompt(pick: dict[str, _Family]) -> float | None:
    family = pick.get("prompt_tokens")
    if family is None:
        return None
    if family.kind == "histogram":
        count, total = _total(family, "_count"), _total(family, "_sum")
    else:
        requests = pick.get("requests")
        count = _total(requests) if requests is not None else 0.0
        total = _total(family)
    return total / count if count > 0 else None


def _nixl(pick: dict[str, _Family]) -> NixlTotals | None:
    time_family, bytes_family = pick.get("nixl_xfer_time"), pick.get("nixl_bytes")
    if time_family is None and bytes_family is None:
        return None
    return NixlTotals(
        transfers=_total(time_family, "_count") if time_family else 0.0,
        seconds=_total(time_family, "_sum") if time_family else 0.0,
        bytes=_total(bytes_family, "_sum") if bytes_family else 0.0,
        failed=_gauge(pick.get("nixl_failed")) or 0.0,
        expired=_gauge(pick.get("nixl_expired")) or 0.0)


def samples_of(text: str, families: Iterable[str]) -> list[tuple[str, dict[str, str], float]]:
    """Every sample (name, labels, value) of the named ``families`` in Prometheus text
    (a histogram family's ``_count``/``_sum``/``_bucket`` samples included)."""
    wanted = {name: name for name in families}
    return [sample for family in _families(text, wanted).values()
            for sample in family.samples]
