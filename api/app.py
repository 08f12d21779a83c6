"""The FastAPI application factory; settings and state are built at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from api import problems
from api.routers import reservations, transfers, workers
from api.routing import Fabric
from api.runtime import Runtime, build_runtime, replicate_kv_events, sweep_reservations
from api.security import AuthError, BodyLimit, Role, TokenAuth, auth_error_handler, require
from api.settings import Settings
from api.ui.router import install_ui
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
    while True:
        try:
            await sweep_reservations(runtime, settings.replica_lease_ttl_s)
            gone = await coordinator.expire()
        except Exception:  # the sweeper must survive one bad round (Redis down, say)
            log.exception("lease sweep failed")
        else:
            if gone:
                log.warning("leases expired: %s", ", ".join(gone))
        await asyncio.sleep(settings.expire_interval_s)


async def _follow_loop(services: ServiceState, interval_s: float) -> None:
    """Adopt topology and placement changes made through other replicas, forever."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await services.refresh()
        except StoreUnavailableError as exc:
            log.warning("shared documents unavailable: %s", exc.detail)
        except Exception:  # one bad document must not stop the replica following
            log.exception("following the shared documents failed")


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
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    _install_services(app, settings)  # first: routes are matched in order, /v1/route is hot
    _follow_fabric(app.state.services, coordinator, runtime)
    app.include_router(workers.router, dependencies=[require(Role.WORKER)])
    app.include_router(transfers.router, dependencies=[require(Role.WORKER)])
    app.include_router(reservations.router, dependencies=[require(Role.WORKER)])
    _observability(app, runtime)
    install_ui(app, settings)
    return app


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


def _lifespan(coordinator: TransferCoordinator, runtime: Runtime, settings: Settings) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services: ServiceState = app.state.services
        await _start_services(services)
        tasks = [_task(_expire_loop(coordinator, runtime, settings)),
                 _task(_calibrate_loop(services, runtime, settings.calibrate_interval_s))]
        if runtime.replicated:  # one process applies events on receipt; nothing to replay
            tasks.append(_task(replicate_kv_events(runtime, settings.kv_event_poll_ms)))
            tasks.append(_task(_follow_loop(services, settings.shared_poll_s)))
        _freeze_startup_heap()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0)
            for closable in (runtime.store, runtime.docs):
                await _close(closable)
    return lifespan


async def _close(resource: object) -> None:
    close = getattr(resource, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close(), 2.0)


def _freeze_startup_heap() -> None:
    """Move everything allocated so far out of the garbage collector's reach.

    Start-up leaves a large, permanent heap (modules, pydantic validators, the fabric
    and its distance matrices). Every full collection walked all of it: the route
    benchmark saw generation-2 pauses of ~100 ms, which set its p99. Frozen objects are
    never collected, which is right for state that lives as long as the process; what
    start-up already discarded is collected first so that it is not frozen with it.
    """
    gc.collect()
    gc.freeze()


def _task(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.create_task(coro)


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
        return PlainTextResponse(runtime.telemetry.render_prometheus(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/alerts", tags=["telemetry"], dependencies=[require(Role.WORKER)])
    async def alerts(include_resolved: bool = False) -> list[Alert]:
        """Transfer-latency drift alerts by tier, naming the domains involved."""
        return runtime.telemetry.alerts(include_resolved=include_resolved)


def _install_services(app: FastAPI, settings: Settings) -> None:
    """Topology, placement and routing resources (they load lazily, on first use)."""
    from api.service import install_services

    install_services(app, settings)
