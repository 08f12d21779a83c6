"""The topology, placement and routing services of the app, wired in one call.

``install_services(app, settings)`` puts a :class:`ServiceState` on
``app.state.services`` and mounts the topology, placement, route and health routers
with their auth dependencies (operators alone change topology and placement).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from api.feeds import FabricChange, Feeds, build_from_feeds, diff_fabrics
from api.placement_jobs import (
    CurrentPlacement,
    JobBook,
    PlacementTarget,
    run_job,
    surviving,
    violations,
)
from api.routing import Fabric
from api.security import AuthError, Role, TokenAuth, auth_error_handler, require
from api.settings import Settings
from api.snapshots import LiveSnapshots
from policies.profile import Policy, resolve_policy
from policies.registry import default_registry
from scheduler.prefix import PrefixIndex
from scheduler.router.router import Router
from topology.distance import DistanceModel
from topology.spec import FabricSpec, load_fabric

log = logging.getLogger(__name__)
#: Decision latencies kept for the metrics endpoint (the newest win).
LATENCY_WINDOW = 10_000


class ServiceState:
    """What the topology, placement and route resources share in one process."""

    def __init__(self, policy: Policy, prefix_index: PrefixIndex,
                 spec: FabricSpec | None = None) -> None:
        self.policy = policy
        self.prefix_index = prefix_index
        self.feeds = Feeds()
        self.fabric: Fabric | None = self.make_fabric(spec) if spec is not None else None
        self.current: CurrentPlacement | None = None
        self.jobs = JobBook()
        self.lock = asyncio.Lock()
        self.decision_latency_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.decisions = 0
        self.snapshots = LiveSnapshots()
        self._tasks: set[asyncio.Task[Any]] = set()

    def make_fabric(self, spec: FabricSpec) -> Fabric:
        """A fabric bundle whose router shares the app's prefix index."""
        distance = DistanceModel(spec)
        router = Router(distance, self.policy, index=self.prefix_index)
        return Fabric(spec, distance, router, frozenset(distance.names))

    def record_decision(self, seconds: float) -> None:
        """Count one routing decision and keep its latency."""
        self.decisions += 1
        self.decision_latency_s.append(seconds)

    def background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` after the response, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for every background job (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def update_feeds(self, edit: Callable[[Feeds], Feeds | None],
                           ) -> tuple[FabricChange, str | None]:
        """Apply ``edit`` to the feeds, rebuild the fabric and swap it in; re-check the
        placement.

        ``edit`` returns None when there is nothing new (a re-posted capture). Returns what
        changed and the id of a re-solve job when the placement broke. Without an
        inventory the feeds are kept for later and nothing changes. Failed builds
        (conflicts, unknown hosts) leave feeds and fabric as they were.
        """
        async with self.lock:
            feeds = edit(self.feeds)
            if feeds is None:
                return FabricChange(changed=False), None
            if feeds.inventory is None:
                self.feeds = feeds
                return FabricChange(changed=False), None
            spec = await asyncio.to_thread(build_from_feeds, feeds)
            self.feeds = feeds
            before = self.fabric.spec if self.fabric else None
            change = diff_fabrics(before, spec)
            if not change.changed:
                return change, None
            self.fabric = self.make_fabric(spec)
            return change, self._recheck(self.fabric)

    def _recheck(self, fabric: Fabric) -> str | None:
        current = self.current
        if current is None:
            return None
        broken = violations(current.target, current.placement, fabric.spec, fabric.distance)
        if not broken:
            return None
        reason = "; ".join(broken[:5])
        log.warning("placement no longer holds: %s", reason)
        job = self.jobs.new("re-solve", reason=reason)
        kept = surviving(current.placement, fabric.distance)
        request = current.target.request(fabric.spec, current=kept)
        self.background(self._resolve(job.id, request, fabric, current.target))
        return job.id

    async def _resolve(self, job_id: str, request: Any, fabric: Fabric,
                       target: PlacementTarget) -> None:
        result = await run_job(self.jobs, job_id, request, fabric.distance)
        if result is not None and self.fabric is fabric:
            self.current = CurrentPlacement(placement=result, target=target,
                                            origin="re-solve", applied_at=time.time())

    async def solve(self, job_id: str, target: PlacementTarget, fabric: Fabric) -> None:
        """Run a solve job and make its result the placement in force."""
        result = await run_job(self.jobs, job_id, target.request(fabric.spec), fabric.distance)
        if result is not None and self.fabric is fabric:
            self.current = CurrentPlacement(placement=result, target=target, origin="solve",
                                            applied_at=time.time())


def install_services(app: FastAPI, settings: Settings) -> None:
    """Build the shared service state and mount the topology/placement/route routers."""
    from api.routers import health, placement, route, topology

    spec = load_fabric(settings.fabric) if settings.fabric else None
    policy = resolve_policy(None, default_registry())
    app.state.services = ServiceState(policy, app.state.prefix_index, spec)
    if not hasattr(app.state, "auth"):
        app.state.auth = TokenAuth(None, None)  # auth off unless the app configured tokens
    app.add_exception_handler(AuthError, auth_error_handler)
    reader, operator = require(Role.WORKER), require()
    app.include_router(route.router, dependencies=[reader])  # first: the hot path
    app.include_router(topology.reads, dependencies=[reader])
    app.include_router(topology.writes, dependencies=[operator])
    app.include_router(placement.reads, dependencies=[reader])
    app.include_router(placement.writes, dependencies=[operator])
    app.include_router(health.router)


async def _services(request: Request) -> ServiceState:
    services: ServiceState = request.app.state.services
    return services


#: The running app's services, as a FastAPI dependency.
Services = Annotated[ServiceState, Depends(_services)]
