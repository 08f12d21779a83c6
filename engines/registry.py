"""The engine registry: registered instances, their health, load and KV-event feeds.

:class:`EngineRegistry` runs, for every registered :class:`EngineInstance`:

* a **scrape** of the engine's own ``/health`` and ``/metrics`` every
  ``scrape_interval_s`` (all instances in one loop, ``concurrency`` at a time). A
  refused connection or an error status on ``/health`` takes the instance out of
  routing at once and drops its prefix-index entries (its cache died with it); a slow
  or silent engine leaves routing when it has not answered for ``stale_after_s`` (the
  service sets it to the worker lease). It comes back with its next good answer, and
  its KV-event history is fetched again from the replay endpoint;
* **KV-event streams** (:mod:`engines.kv_feed`): one per data-parallel rank in connect
  mode, or its topic on the shared bound socket in bind mode. Events are translated to
  toposched's keys (:mod:`engines.translate`) and handed to ``apply`` (the prefix
  index) in order.

It answers the routing side synchronously: :meth:`workers` (the routable instances of a
model as policy workers, their engine load merged with reservations), :meth:`block_size`
(the engine's block size for a model). NIXL transfer totals that grew since the last
scrape go to ``on_nixl`` (the service labels them by the pair's tier).

Why 1 s by default: llm-d scrapes every 50 ms, which at 1,000 engines is 20,000 scrapes
a second for one process. Between scrapes the reservations toposched makes itself carry
the load it added (:mod:`engines.live`), so a coarser scrape loses little.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import compress, count
from operator import is_not

import httpx
import zmq.asyncio

from engines.events import EventBatch
from engines.instance import EngineInstance
from engines.kv_feed import (
    CentralSubscriber,
    PublisherStream,
    ReplayClient,
    follow_publisher,
    offset_endpoint,
)
from engines.live import InstanceStatus, LiveInstance
from engines.metrics import NixlTotals, parse_metrics
from engines.translate import KeyTranslator, NativeEvent
from policies.snapshot import Worker
from scheduler.background import stop_tasks
from scheduler.state.reservations import WorkerLoad

log = logging.getLogger(__name__)
Clock = Callable[[], float]


@dataclass(frozen=True)
class RegistrySettings:
    """How often and how patiently engines are asked."""

    scrape_interval_s: float = 1.0
    stale_after_s: float = 10.0
    timeout_s: float = 2.0
    concurrency: int = 64
    #: Where the centralised bound SUB socket listens (bind mode); None: no bound socket.
    bind_endpoint: str | None = None


@dataclass(frozen=True)
class NixlDelta:
    """NIXL transfers an engine finished since its previous scrape."""

    transfers: float
    seconds: float
    bytes: float
    failed: float
    expired: float


@dataclass
class _ModelView:
    """The routable instances of one model as last built, and their workers."""

    version: int
    names: list[str]
    lives: list[LiveInstance]
    loads: list[WorkerLoad | None]
    workers: list[Worker]


class EngineRegistry:
    """Registered engine instances and what is learned from them (see module docstring)."""

    def __init__(self, apply: Callable[[NativeEvent], object], drop: Callable[[str], object],
                 settings: RegistrySettings | None = None, *,
                 on_nixl: Callable[[str, NixlDelta], None] | None = None,
                 clock: Clock = time.monotonic) -> None:
        """``apply`` takes translated events (the prefix index's ``apply``), ``drop`` a
        worker name whose entries are void (its ``remove_worker``)."""
        self.settings = settings or RegistrySettings()
        self._apply, self._drop, self._on_nixl, self.clock = apply, drop, on_nixl, clock
        self._live: dict[str, LiveInstance] = {}
        self._nixl: dict[str, NixlTotals] = {}
        self._context: zmq.asyncio.Context | None = None
        self._http: httpx.AsyncClient | None = None
        self._central: CentralSubscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._views: dict[str | None, _ModelView] = {}
        self._block_sizes: dict[str | None, tuple[int, int | None]] = {}
        self._version = 0
        #: Registered instances per model (any state).
        self._models: dict[str, int] = {}

    # -- lifetime ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start scraping (and the bound socket); instances put before start begin now."""
        self._context = zmq.asyncio.Context()
        self._http = httpx.AsyncClient(timeout=self.settings.timeout_s)
        if self.settings.bind_endpoint:
            self._central = CentralSubscriber(self._context, self.settings.bind_endpoint)
            self._tasks.append(asyncio.create_task(self._central.run()))
        self._tasks.append(asyncio.create_task(self._scrape_loop()))
        for live in self._live.values():
            self._start_feeds(live)

    async def close(self) -> None:
        """Stop every task and close sockets and connections."""
        tasks = self._tasks + [t for live in self._live.values() for t in live.tasks]
        await stop_tasks(tasks)
        self._tasks.clear()
        if self._http is not None:
            await self._http.aclose()
        if self._context is not None:
            self._context.term()
        self._context = self._http = None

    @property
    def bound_endpoint(self) -> str | None:
        """The bound socket's address once bound (bind mode)."""
        return self._central.bound if self._central is not None else None

    # -- the instance set ----------------------------------------------------------------

    def put(self, instance: EngineInstance) -> bool:
        """Register or replace ``instance``; True when it is new. A changed declaration
        starts over (feeds, index entries); an identical one changes nothing."""
        old = self._live.get(instance.name)
        if old is not None and old.instance == instance:
            return False
        if old is not None:
            self._stop(old)
            self._count_model(old.instance.model, -1)
        live = LiveInstance(instance, KeyTranslator(instance.name, instance.model,
                                                    instance.block_size))
        self._live[instance.name] = live
        self._count_model(instance.model, +1)
        self._changed()
        if self._context is not None:
            self._start_feeds(live)
        return old is None

    def remove(self, name: str) -> bool:
        """Forget an instance (feeds stopped, index entries dropped); False if unknown."""
        live = self._live.pop(name, None)
        if live is None:
            return False
        self._stop(live)
        self._count_model(live.instance.model, -1)
        self._nixl.pop(name, None)
        self._changed()
        return True

    def replace_all(self, instances: Iterable[EngineInstance]) -> None:
        """Make the registered set exactly ``instances``."""
        wanted = {i.name: i for i in instances}
        for name in [n for n in self._live if n not in wanted]:
            self.remove(name)
        for instance in wanted.values():
            self.put(instance)

    def instances(self) -> list[EngineInstance]:
        """Every registered instance, by name."""
        return [self._live[name].instance for name in sorted(self._live)]

    def get(self, name: str) -> EngineInstance | None:
        """A registered instance by name."""
        live = self._live.get(name)
        return live.instance if live is not None else None

    def __contains__(self, name: object) -> bool:
        return name in self._live

    def models(self) -> list[str]:
        """Models some registered instance serves (in routing or not), sorted."""
        return sorted(self._models)

    def serves(self, model: str) -> int:
        """How many registered instances serve ``model`` (in routing or not)."""
        return self._models.get(model, 0)

    def _count_model(self, model: str, change: int) -> None:
        left = self._models.get(model, 0) + change
        if left > 0:
            self._models[model] = left
        else:
            self._models.pop(model, None)

    # -- what routing reads ------------------------------------------------------------

    def state_of(self, name: str) -> str | None:
        """``starting``, ``up``, ``stale`` or ``down`` (None: not registered)."""
        live = self._live.get(name)
        return None if live is None else live.state(self.clock(), self.settings.stale_after_s)

    def routable(self, name: str) -> bool:
        """Whether the instance answers its /health (recently enough)."""
        live = self._live.get(name)
        return live is not None and live.state(self.clock(), self.settings.stale_after_s) == "up"

    def size(self) -> int:
        """Registered instances, in routing or not."""
        return len(self._live)

    def workers(self, model: str | None, reserved: Mapping[str, WorkerLoad]
                ) -> tuple[Worker, ...]:
        """The routable instances serving ``model`` (None: any) as policy workers.

        On the route path: the routable set and its workers are kept per model and
        rebuilt only when something changed (an instance, a health state, or a scrape
        round ended); per call only the instances whose reservation changed (an identity
        sweep in C) get new workers, so 10,000 instances cost little per route.
        """
        view = self._current_view(model)
        loads = list(map(reserved.get, view.names))
        for i in compress(count(), map(is_not, loads, view.loads)):
            view.workers[i] = view.lives[i].worker(loads[i])
        view.loads = loads
        return tuple(view.workers)

    def routable_instances(self, model: str | None) -> list[EngineInstance]:
        """The instances of ``model`` (None: any) in routing now."""
        return [live.instance for live in self._current_view(model).lives]

    def _current_view(self, model: str | None) -> _ModelView:
        view = self._views.get(model)
        if view is None or view.version != self._version:
            view = self._views[model] = self._view(model)
        return view

    def _view(self, model: str | None) -> _ModelView:
        now, stale = self.clock(), self.settings.stale_after_s
        lives = [live for live in self._live.values()
                 if (model is None or live.instance.model == model)
                 and live.state(now, stale) == "up"]
        return _ModelView(self._version, [live.name for live in lives], lives,
                          [None] * len(lives), [live.worker(None) for live in lives])

    def _changed(self) -> None:
        """Something routing reads changed: the per-model views are rebuilt on next use."""
        self._version += 1

    def block_size(self, model: str | None) -> int | None:
        """The engines' block size for ``model`` (the most common among its instances).

        On the route path: counted once per registry version (an instance, a health
        state or an engine's block size changed), not per route."""
        cached = self._block_sizes.get(model)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        size = self._count_block_size(model)
        self._block_sizes[model] = (self._version, size)
        return size

    def _count_block_size(self, model: str | None) -> int | None:
        sizes: dict[int, int] = {}
        for live in self._live.values():
            size = live.block_size
            if size and (model is None or live.instance.model == model):
                sizes[size] = sizes.get(size, 0) + 1
        return max(sizes, key=lambda s: (sizes[s], -s)) if sizes else None

    def status(self, name: str | None = None) -> list[InstanceStatus]:
        """Status of one instance (or all, by name)."""
        now, stale = self.clock(), self.settings.stale_after_s
        names = [name] if name is not None else sorted(self._live)
        return [self._live[n].status(now, stale) for n in names if n in self._live]

    def live(self) -> list[LiveInstance]:
        """The live records (for metrics exposition)."""
        return list(self._live.values())

    # -- KV events ---------------------------------------------------------------------

    def _start_feeds(self, live: LiveInstance) -> None:
        events = live.instance.kv_events
        if events is None or self._context is None:
            return
        ranks = range(live.instance.dp_size) if events.mode == "connect" else range(1)
        for rank in ranks:
            replay = None
            if events.replay_endpoint:
                replay = ReplayClient(self._context, offset_endpoint(events.replay_endpoint,
                                                                     rank))
            stream = PublisherStream(f"{live.name}#{rank}", self._applier(live, rank),
                                     self._resetter(live, rank), replay, self.clock)
            live.streams.append(stream)
            self._attach(live, stream, rank)

    def _attach(self, live: LiveInstance, stream: PublisherStream, rank: int) -> None:
        events = live.instance.kv_events
        assert events is not None and self._context is not None
        if events.mode == "bind":
            live.endpoints.append(f"bind:{events.topic}")
            if self._central is None:
                live.last_error = "kv_events.mode is bind but no bound socket is configured"
                return
            self._central.streams[events.topic.encode()] = stream
            live.tasks.append(asyncio.create_task(stream.catch_up()))
            return
        endpoint = offset_endpoint(events.endpoint or "", rank)
        live.endpoints.append(endpoint)
        live.tasks.append(asyncio.create_task(
            follow_publisher(self._context, endpoint, events.topic, stream)))

    def _applier(self, live: LiveInstance, rank: int) -> Callable[[EventBatch], None]:
        def apply(batch: EventBatch) -> None:
            for event in live.translator.translate(batch.events, rank):
                self._apply(event)
        return apply

    def _resetter(self, live: LiveInstance, rank: int) -> Callable[[], None]:
        def reset() -> None:
            for event in live.translator.forget_rank(rank):
                self._apply(event)
        return reset

    def _stop(self, live: LiveInstance) -> None:
        for task in live.tasks:
            task.cancel()
        events = live.instance.kv_events
        if self._central is not None and events is not None and events.mode == "bind":
            self._central.streams.pop(events.topic.encode(), None)
        self._drop(live.name)

    # -- health and load ---------------------------------------------------------------

    async def _scrape_loop(self) -> None:
        limit = asyncio.Semaphore(self.settings.concurrency)

        async def one(live: LiveInstance) -> None:
            async with limit:
                await self.scrape(live)

        while True:
            started = self.clock()
            await asyncio.gather(*(one(live) for live in list(self._live.values())))
            self._changed()  # new load figures, index holdings, staleness
            spent = self.clock() - started
            await asyncio.sleep(max(self.settings.scrape_interval_s - spent, 0.0))

    async def scrape_all(self) -> None:
        """One scrape of every instance now (e.g. before serving: instances are out of
        routing until their /health has answered once)."""
        await asyncio.gather(*(self.scrape(live) for live in list(self._live.values())))
        self._changed()

    def mark_down(self, name: str, reason: str) -> None:
        """Take an instance out of routing now: a caller could not reach it (refused,
        reset, timed out). The next scrape brings it back if its /health answers."""
        live = self._live.get(name)
        if live is not None:
            self._went_down(live, reason)

    async def scrape(self, live: LiveInstance) -> None:
        """Ask one engine for /health and /metrics and update what is known."""
        assert self._http is not None
        base = live.instance.base_url
        try:
            health = await self._http.get(base + "/health")
            if health.status_code >= 400:
                self._went_down(live, f"/health answered {health.status_code}")
                return
            metrics = await self._http.get(base + "/metrics")
        except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
            self._went_down(live, f"cannot reach {base}: {exc}")
            return
        except httpx.HTTPError as exc:  # slow, not gone: stale after stale_after_s
            live.last_error = f"{type(exc).__name__} from {base}"
            return
        if self._live.get(live.name) is not live:
            return  # removed or replaced while waiting
        self._came_up(live)
        self._read_metrics(live, metrics)

    def _read_metrics(self, live: LiveInstance, answer: httpx.Response) -> None:
        if answer.status_code != 200:
            live.last_error = f"/metrics answered {answer.status_code}"
            return
        block_size = live.block_size
        try:
            live.metrics = parse_metrics(answer.text, live.instance.engine)
        except ValueError as exc:
            live.last_error = f"/metrics is not Prometheus text: {exc}"
            return
        if live.block_size != block_size:  # learned from /metrics: prompts hash by it
            self._changed()
        live.last_error = None
        if live.metrics.block_size and not live.translator.block_size:
            live.translator.block_size = live.metrics.block_size
        self._nixl_delta(live.name, live.metrics.nixl)

    def _came_up(self, live: LiveInstance) -> None:
        live.last_ok = self.clock()
        if live.up is not True:
            self._changed()
        if live.up is False:
            log.warning("engine %s answers again", live.name)
            for stream in live.streams:
                live.tasks.append(asyncio.create_task(stream.catch_up()))
        live.up = True

    def _went_down(self, live: LiveInstance, reason: str) -> None:
        live.last_error = reason
        if live.up is False:
            return
        log.warning("engine %s out of routing: %s", live.name, reason)
        live.up = False
        self._changed()
        live.translator = KeyTranslator(live.name, live.instance.model, live.block_size)
        for stream in live.streams:
            stream.reset()
        self._drop(live.name)

    def _nixl_delta(self, name: str, totals: NixlTotals | None) -> None:
        if totals is None:
            return
        before = self._nixl.get(name)
        self._nixl[name] = totals
        if before is None or totals.transfers < before.transfers or self._on_nixl is None:
            return  # first sight, or the engine restarted (its counters began again)
        delta = NixlDelta(totals.transfers - before.transfers, totals.seconds - before.seconds,
                          totals.bytes - before.bytes, totals.failed - before.failed,
                          totals.expired - before.expired)
        if delta.transfers > 0 or delta.failed > 0:
            try:
                self._on_nixl(name, delta)
            except Exception:  # telemetry must not stop the scrape
                log.exception("recording NIXL figures of %s failed", name)
