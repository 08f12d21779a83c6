"""One registered engine instance at run time: health, load, KV-event streams, status.

:class:`LiveInstance` holds what the registry learned about an instance (its last
``/metrics`` figures, when ``/health`` last answered, its event streams and key
translator); :meth:`LiveInstance.worker` turns that, with the load toposched itself
reserved on it, into the :class:`~policies.snapshot.Worker` the policies score.

How engine figures and reservations combine (both are lower bounds of the engine's
real load: the metrics miss what was routed since the last scrape, the reservations
miss what other clients sent): the larger of the two is used, so a request counted by
both is not counted twice.

* ``running_requests`` = max(reserved requests, running + waiting);
* ``queued_tokens`` = max(reserved tokens, waiting × mean prompt length), the mean
  from the engine's prompt-length histogram (``DEFAULT_PROMPT_TOKENS`` without one);
* ``free_kv_blocks`` = blocks × (1 − KV usage); ``capacity_kv_blocks`` = blocks
  (``cache_config_info``); unknown capacity: ``UNKNOWN_CAPACITY`` blocks, so the KV
  filter does not refuse an engine that does not say;
* ``cached_kv_blocks`` = entries the index holds for it (from its KV events).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from engines.instance import EngineInstance
from engines.kv_feed import PublisherStream, StreamStats
from engines.metrics import EngineMetrics
from engines.translate import KeyTranslator, TranslateStats
from policies.snapshot import Role, Worker
from scheduler.state.reservations import WorkerLoad

#: Concurrent requests an instance takes unless it declares ``max_requests``.
DEFAULT_MAX_REQUESTS = 256
#: Prompt length assumed per waiting request when the engine reports no mean.
DEFAULT_PROMPT_TOKENS = 1024
#: KV blocks assumed when the engine does not report its capacity.
UNKNOWN_CAPACITY = 1 << 20
State = Literal["starting", "up", "stale", "down"]


class StreamStatus(BaseModel):
    """One KV-event stream (engine, DP rank) as the API shows it."""

    model_config = ConfigDict(frozen=True)

    rank: int
    endpoint: str
    batches: int
    events: int
    skipped_events: int
    duplicates: int
    gaps: int
    replayed_batches: int
    lost_batches: int
    restarts: int
    replay_failures: int
    malformed: int
    last_seq: int | None
    last_event_age_s: float | None


class LoadFigures(BaseModel):
    """The engine's own load figures from its last scrape, and where they came from."""

    model_config = ConfigDict(frozen=True)

    running: float | None
    waiting: float | None
    kv_usage: float | None
    block_size: int | None
    num_blocks: int | None
    mean_prompt_tokens: float | None
    metric_names: dict[str, str]
    missing: tuple[str, ...]


class InstanceStatus(BaseModel):
    """What toposched knows about an instance right now."""

    model_config = ConfigDict(frozen=True)

    name: str
    state: State
    routable: bool
    last_health_age_s: float | None
    last_error: str | None
    block_size: int | None
    load: LoadFigures | None
    kv_events: list[StreamStatus]
    translation: dict[str, int]
    indexed_blocks: int


@dataclass
class LiveInstance:
    """An instance and everything learned about it since it was registered."""

    instance: EngineInstance
    translator: KeyTranslator
    streams: list[PublisherStream] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics: EngineMetrics | None = None
    #: True after /health answered, False after it failed hard, None before the first try.
    up: bool | None = None
    last_ok: float | None = None
    last_error: str | None = None
    _worker: tuple[object, Worker] | None = None

    @property
    def name(self) -> str:
        """The instance's (worker) name."""
        return self.instance.name

    @property
    def block_size(self) -> int | None:
        """Tokens per block: declared, else from /metrics, else from its events."""
        if self.instance.block_size:
            return self.instance.block_size
        if self.metrics is not None and self.metrics.block_size:
            return self.metrics.block_size
        return self.translator.block_size

    def state(self, now: float, stale_after_s: float) -> State:
        """``starting`` (never answered), ``up``, ``stale`` (no answer for a while) or
        ``down`` (its /health failed)."""
        if self.up is False:
            return "down"
        if self.last_ok is None:
            return "starting"
        return "up" if now - self.last_ok <= stale_after_s else "stale"

    def worker(self, reserved: WorkerLoad | None) -> Worker:
        """The instance as the policies see it (kept while its inputs are unchanged)."""
        key = (self.metrics, None if reserved is None else
               (reserved.tokens, reserved.requests, reserved.blocks, reserved.context),
               self.translator.holds())
        if self._worker is None or self._worker[0] != key:
            self._worker = (key, self._build(reserved))
        return self._worker[1]

    def _build(self, reserved: WorkerLoad | None) -> Worker:
        m = self.metrics or EngineMetrics()
        running, waiting = int(m.running or 0), int(m.waiting or 0)
        prompt = m.mean_prompt_tokens or DEFAULT_PROMPT_TOKENS
        capacity = m.num_blocks or UNKNOWN_CAPACITY
        free = int(capacity * (1.0 - (m.kv_usage or 0.0)))
        return Worker(
            self.name, Role(self.instance.role), self.instance.gpu_names,
            queued_tokens=max(reserved.tokens if reserved else 0, int(waiting * prompt)),
            running_requests=max(reserved.requests if reserved else 0, running + waiting),
            max_running_requests=self.instance.max_requests or DEFAULT_MAX_REQUESTS,
            free_kv_blocks=free, capacity_kv_blocks=capacity,
            cached_kv_blocks=self.translator.holds(),
            promised_kv_blocks=reserved.blocks if reserved else 0,
            context_tokens=reserved.context if reserved else 0)

    def status(self, now: float, stale_after_s: float) -> InstanceStatus:
        """Its status for the API."""
        state = self.state(now, stale_after_s)
        return InstanceStatus(
            name=self.name, state=state, routable=state == "up",
            last_health_age_s=None if self.last_ok is None else now - self.last_ok,
            last_error=self.last_error, block_size=self.block_size,
            load=_figures(self.metrics),
            kv_events=[_stream_status(rank, endpoint, stream.stats, now)
                       for rank, (endpoint, stream)
                       in enumerate(zip(self.endpoints, self.streams, strict=True))],
            translation=_counters(self.translator.stats),
            indexed_blocks=self.translator.holds())


def _figures(m: EngineMetrics | None) -> LoadFigures | None:
    if m is None:
        return None
    return LoadFigures(running=m.running, waiting=m.waiting, kv_usage=m.kv_usage,
                       block_size=m.block_size, num_blocks=m.num_blocks,
                       mean_prompt_tokens=m.mean_prompt_tokens, metric_names=dict(m.found),
                       missing=m.missing)


def _stream_status(rank: int, endpoint: str, s: StreamStats, now: float) -> StreamStatus:
    return StreamStatus(
        rank=rank, endpoint=endpoint, batches=s.batches, events=s.events,
        skipped_events=s.skipped_events, duplicates=s.duplicates, gaps=s.gaps,
        replayed_batches=s.replayed_batches, lost_batches=s.lost_batches, restarts=s.restarts,
        replay_failures=s.replay_failures, malformed=s.malformed, last_seq=s.last_seq,
        last_event_age_s=None if s.last_received is None else now - s.last_received)


def _counters(stats: TranslateStats) -> dict[str, int]:
    return dict(vars(stats))
