"""The FastAPI application factory; settings and state are built at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from api import problems
from api.engine_feeds import EngineFeeds
from api.heap import long_lived_heap
from api.outages import Outage
from api.routers import reservations, transfers, workers
from api.routing import Fabric
from api.runtime import Runtime, build_runtime, replicate_kv_events, sweep_reservations
from api.security import (
    Authenticate,
    AuthError,
    BodyLimit,
    Role,
    TokenAuth,
    auth_error_handler,
    own_worker,
    require,
)
from api.settings import Settings
from api.strict_numbers import StrictNumbers
from api.ui.router import install_ui
from scheduler.background import stop_tasks
from scheduler.state.reservations import StoreUnavailableError
from scheduler.telemetry import Alert
from scheduler.transfer.coordinator import TransferCoordinator
from topology.distance import DistanceModel
from topology.spec import load_fabric

if TYPE_CHECKING:
    from api.service import ServiceState

log = logging.getLogger(__name__)


async def _expire_loop(coordinator: TransferCoordinator, runtime: Runtime,
                       settings: Settings) -> None:
    """Sweep, forever: lapsed worker leases, overdue transfers, ended reservations."""
    outage = Outage("lease sweep", log)
    while True:
        try:
            await sweep_reservations(runtime, settings.replica_lease_ttl_s)
            gone = await coordinator.expire()
        except Exception as exc:  # the sweeper must survive one bad round (Redis down, say)
            outage.failed(exc)
        else:
            outage.ok()
            if gone:
                log.warning("leases expired: %s", ", ".join(gone))
        await asyncio.sleep(settings.expire_interval_s)


async def _follow_loop(services: ServiceState, interval_s: float) -> None:
    """Adopt topology and placement changes made through other replicas, forever."""
    outage = Outage("following the shared documents", log)
    while True:
        await asyncio.sleep(interval_s)
        try:
            await services.refresh()
        except Exception as exc:  # one bad document must not stop the replica following
            outage.failed(exc)
        else:
            outage.ok()


async def _start_services(services: ServiceState) -> None:
    """Load the shared topology and placement before serving (Redis down: the follow
    loop loads them once it answers)."""
    try:
        await services.start()
    except StoreUnavailableError as exc:
        log.warning("shared documents unavailable at start-up: %s", exc.detail)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build one scheduler replica (in memory, or sharing state through Redis)."""
    settings = settings or Settings()
    spec = load_fabric(settings.fabric) if settings.fabric else None
    runtime = build_runtime(settings, DistanceModel(spec) if spec is not None else None)
    coordinator = TransferCoordinator(runtime.store, mode=settings.transfer_mode,
                                      lease_ttl_s=settings.lease_ttl_s,
                                      deadline_s=settings.transfer_deadline_s, spec=spec)
    coordinator.listeners.append(runtime.transfer_ended)
    app = FastAPI(title="toposched", version="0.1.0",
                  lifespan=_lifespan(coordinator, runtime, settings),
                  description="Topology-aware scheduler for disaggregated LLM inference.")
    app.state.settings = settings
    app.state.coordinator = coordinator
    app.state.runtime = runtime
    app.state.prefix_index = runtime.prefix
    app.state.auth = TokenAuth(_secret(settings.worker_token), _secret(settings.operator_token))
    problems.install(app)
    app.add_exception_handler(AuthError, auth_error_handler)
    app.add_middleware(StrictNumbers, routes_of=app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s,
                       streams=(workers.REPORT_STREAM_SUFFIX,))
    # outermost: no body is read before the token is checked
    app.add_middleware(Authenticate, auth=app.state.auth, protected=PROTECTED_PATHS)
    # a transfer's submit and long-poll: plain Starlette routes at the head of the routes
    transfers.install_lean_routes(app)
    # outside all of them for a plainly valid submit (it steps aside for the rest)
    app.add_middleware(transfers.SubmitFastPath, owner=app, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_timeout_s)
    if settings.gateway:
        from api.routers import openai

        app.include_router(openai.router)
        # outermost of all for its two POST endpoints (the body limit and client token
        # checked there, as the layers it skips would)
        app.add_middleware(openai.CompletionsFastPath, owner=app,
                           max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    _install_services(app, settings)  # next: /v1/route is hot
    _install_engines(app, settings)
    _follow_fabric(app.state.services, coordinator, runtime)
    workers_only = [require(Role.WORKER), own_worker(SHARED_WORKER_PATHS)]
    app.include_router(workers.router, dependencies=workers_only)
    app.include_router(transfers.router, dependencies=workers_only)
    # a reservation id is its own capability: whoever sees the request end releases it
    app.include_router(reservations.router, dependencies=[require(Role.WORKER)])
    _observability(app, runtime)
    if settings.gateway:
        from api.gateway.setup import install_gateway

        install_gateway(app, settings)
    install_ui(app, settings)
    return app


#: Path prefixes that need a token whenever authentication is on (answered 401 before
#: their body is read). The health probes, metrics and API docs stay open.
PROTECTED_PATHS = ("/v1/workers", "/v1/sidecars", "/v1/transfers", "/v1/kv-events",
                   "/v1/route", "/v1/topology", "/v1/placement", "/v1/alerts",
                   "/v1/reservations", "/v1/instances")
#: Worker routes any worker credential may use for any worker (reading its load).
SHARED_WORKER_PATHS = frozenset({"/v1/workers/{name}/load"})


def _follow_fabric(services: ServiceState, coordinator: TransferCoordinator,
                   runtime: Runtime) -> None:
    """Every fabric put in force (from feeds, or another replica) reaches the transfer
    hints, the telemetry labels and reference figures, and gets the calibrated factors."""
    def adopt(fabric: Fabric) -> None:
        coordinator.use_fabric(fabric.spec, fabric.distance)
        runtime.use_fabric(fabric.distance)
        fabric.router.set_tier_scales(runtime.telemetry.scales().factors)
    services.fabric_listeners.append(adopt)


async def _calibrate_loop(services: ServiceState, runtime: Runtime, interval_s: float) -> None:
    """Feed the calibrated per-tier figures into the router's cost model, forever."""
    while True:
        await asyncio.sleep(interval_s)
        fabric = services.fabric
        try:
            if fabric is not None and fabric.router.set_tier_scales(
                    runtime.telemetry.scales().factors):
                log.info("cost model recalibrated from measured transfers")
        except Exception:  # a bad fit must not stop calibration for good
            log.exception("calibration round failed")


async def _check_persistence(url: str) -> None:
    """Warn at start-up when Redis would lose the shared state on a restart."""
    from scheduler.state.redis_persistence import RedisError, missing_persistence

    try:
        missing = await missing_persistence(url)
    except (RedisError, OSError) as exc:
        log.warning("could not check whether Redis persists its data (CONFIG GET: %s); "
                    "without persistence a Redis restart loses workers and transfers", exc)
        return
    if missing is not None:
        log.warning("Redis has no persistence: %s. A Redis restart loses every worker, "
                    "lease, reservation and transfer in flight; run it with "
                    "--appendonly yes (docs/state.md)", missing)


def _lifespan(coordinator: TransferCoordinator, runtime: Runtime, settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services: ServiceState = app.state.services
        feeds: EngineFeeds = app.state.engine_feeds
        if settings.redis_url:
            await _check_persistence(settings.redis_url)
        await _start_services(services)
        await feeds.start()
        tasks = [_task(_expire_loop(coordinator, runtime, settings)),
                 _task(_calibrate_loop(services, runtime, settings.calibrate_interval_s))]
        if runtime.replicated:  # one process applies events on receipt; nothing to replay
            tasks.append(_task(replicate_kv_events(runtime, settings.kv_event_poll_ms)))
            tasks.append(_task(_follow_loop(services, settings.shared_poll_s)))
            tasks.append(_task(feeds.follow()))
        gateway = getattr(app.state, "gateway", None)
        if gateway is not None:
            from api.gateway.setup import start_gateway

            await start_gateway(gateway)
        try:
            with long_lived_heap():
                yield
        finally:
            await stop_tasks(tasks)
            await feeds.close()
            if gateway is not None:
                from api.gateway.setup import stop_gateway

                await stop_gateway(gateway)
            for closable in (runtime.store, runtime.docs):
                await _close(closable)
    return lifespan


async def _close(resource: object) -> None:
    close = getattr(resource, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close(), 2.0)


def _task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.create_task(coro, name=getattr(coro, "__qualname__", None))


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _observability(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text exposition: transfers by tier, routing, placement, alerts."""
        inflight = runtime.inflight
        runtime.telemetry.set_link_inflight(inflight.bytes_by_link(),
                                            inflight.transfers_by_link())
        feeds: EngineFeeds = app.state.engine_feeds
        return PlainTextResponse(runtime.telemetry.render_prometheus()
                                 + feeds.render_metrics(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/alerts", tags=["telemetry"], dependencies=[require(Role.WORKER)])
    async def alerts(include_resolved: bool = False) -> list[Alert]:
        """Transfer-latency drift alerts by tier, naming the domains involved."""
        return runtime.telemetry.alerts(include_resolved=include_resolved)


def _install_engines(app: FastAPI, settings: Settings) -> None:
    """Engine instances (vLLM, SGLang): registry, REST, and their feeds into routing."""
    from api.routers import instances

    app.state.engine_feeds = EngineFeeds(app.state.runtime, settings)
    app.include_router(instances.reads, dependencies=[require(Role.WORKER)])
    app.include_router(instances.announcements, dependencies=[require(Role.WORKER)])
    app.include_router(instances.writes, dependencies=[require()])


def _install_services(app: FastAPI, settings: Settings) -> None:
    """Topology, placement and routing resources (they load lazily, on first use)."""
    from api.service import install_services

    install_services(app, settings)
