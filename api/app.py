"""The FastAPI application factory; settings and state are built at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from api import problems
from api.routers import transfers, workers
from api.settings import Settings
from scheduler.prefix import PrefixIndex
from scheduler.state.memory import MemoryStore
from scheduler.transfer.coordinator import TransferCoordinator
from topology.spec import load_fabric

log = logging.getLogger(__name__)


async def _expire_loop(coordinator: TransferCoordinator, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            gone = await coordinator.expire()
        except Exception:  # the sweeper must survive one bad round
            log.exception("lease sweep failed")
            continue
        if gone:
            log.warning("leases expired: %s", ", ".join(gone))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the scheduler app (one process, in-memory store)."""
    settings = settings or Settings()
    spec = load_fabric(settings.fabric) if settings.fabric else None
    coordinator = TransferCoordinator(MemoryStore(), mode=settings.transfer_mode,
                                      lease_ttl_s=settings.lease_ttl_s,
                                      deadline_s=settings.transfer_deadline_s, spec=spec)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(_expire_loop(coordinator, settings.expire_interval_s))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    app = FastAPI(title="toposched", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.coordinator = coordinator
    app.state.prefix_index = PrefixIndex()
    problems.install(app)
    app.include_router(workers.router)
    app.include_router(transfers.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    return app
