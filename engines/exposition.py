"""The engine registry's own Prometheus families (appended to the service's /metrics).

Rendered with ``prometheus_client`` from a private registry built per call (no global
state): one family per figure, one series per instance. Staleness is visible as
``toposched_engine_health_age_seconds`` and ``toposched_engine_kv_event_age_seconds``
next to ``toposched_engine_up``; ``toposched_engine_metric_source_info`` names the
engine metric each load signal came from (``vllm:gpu_cache_usage_perc`` on engines that
still use the deprecated name).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engines.live import InstanceStatus
from engines.registry import EngineRegistry

_STREAM_COUNTERS = (("batches", "KV-event batches applied"),
                    ("events", "KV events received"),
                    ("gaps", "sequence gaps seen on the PUB socket"),
                    ("replayed_batches", "batches fetched from the replay endpoint"),
                    ("lost_batches", "batches neither received nor replayed"),
                    ("restarts", "publisher restarts (sequence started again)"))


class _EngineCollector(Collector):
    def __init__(self, registry: EngineRegistry, unattributed: Mapping[str, float]) -> None:
        self.registry, self.unattributed = registry, unattributed

    def collect(self) -> Iterator[Metric]:
        statuses = self.registry.status()
        yield from _health(statuses)
        yield from _load(statuses)
        yield from _events(statuses)
        unattributed = CounterMetricFamily(
            "toposched_engine_nixl_unattributed_transfers",
            "NIXL transfers of a decode engine with no routed handoff to label by tier",
            labels=["instance"])
        for name, count in sorted(self.unattributed.items()):
            unattributed.add_metric([name], count)
        yield unattributed


def _health(statuses: list[InstanceStatus]) -> Iterator[Metric]:
    up = GaugeMetricFamily("toposched_engine_up", "1 while the instance is routable "
                           "(its /health answered within the staleness bound)",
                           labels=["instance"])
    age = GaugeMetricFamily("toposched_engine_health_age_seconds",
                            "seconds since the instance's /health last answered",
                            labels=["instance"])
    for status in statuses:
        up.add_metric([status.name], 1.0 if status.routable else 0.0)
        if status.last_health_age_s is not None:
            age.add_metric([status.name], status.last_health_age_s)
    yield up
    yield age


def _load(statuses: list[InstanceStatus]) -> Iterator[Metric]:
    families = {key: GaugeMetricFamily(f"toposched_engine_{name}", text, labels=["instance"])
                for key, name, text in (
                    ("running", "running_requests", "requests the engine runs (its /metrics)"),
                    ("waiting", "waiting_requests", "requests queued in the engine"),
                    ("kv_usage", "kv_usage_ratio", "share of the engine's KV cache in use"))}
    source = GaugeMetricFamily("toposched_engine_metric_source_info",
                               "which engine metric supplied each signal",
                               labels=["instance", "signal", "metric"])
    for status in statuses:
        if status.load is None:
            continue
        for key, family in families.items():
            value = getattr(status.load, key)
            if value is not None:
                family.add_metric([status.name], float(value))
        for signal, metric in sorted(status.load.metric_names.items()):
            source.add_metric([status.name, signal, metric], 1.0)
    yield from families.values()
    yield source


def _events(statuses: list[InstanceStatus]) -> Iterator[Metric]:
    counters = {key: CounterMetricFamily(f"toposched_engine_kv_event_{key}", text,
                                         labels=["instance"])
                for key, text in _STREAM_COUNTERS}
    age = GaugeMetricFamily("toposched_engine_kv_event_age_seconds",
                            "seconds since the instance's last KV-event batch",
                            labels=["instance"])
    held = GaugeMetricFamily("toposched_engine_indexed_blocks",
                             "blocks the prefix index holds for the instance",
                             labels=["instance"])
    for status in statuses:
        for key, family in counters.items():
            family.add_metric([status.name], float(sum(getattr(s, key)
                                                       for s in status.kv_events)))
        ages = [s.last_event_age_s for s in status.kv_events if s.last_event_age_s is not None]
        if ages:
            age.add_metric([status.name], min(ages))
        held.add_metric([status.name], float(status.indexed_blocks))
    yield from counters.values()
    yield age
    yield held


def render(registry: EngineRegistry, unattributed: Mapping[str, float] | None = None) -> str:
    """Prometheus text for every registered instance ('' when there is none)."""
    if not registry.instances():
        return ""
    target = CollectorRegistry(auto_describe=False)
    target.register(_EngineCollector(registry, unattributed or {}))
    return generate_latest(target).decode()
