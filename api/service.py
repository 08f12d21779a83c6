"""The topology, placement and routing services of the app, wired in one call.

``install_services(app, settings)`` puts a :class:`ServiceState` on
``app.state.services`` and mounts the topology, placement, route and health routers
with their auth dependencies (operators alone change topology and placement).

The topology (feeds and fabric) and the placement in force are shared documents
(:mod:`scheduler.state.docs`: in memory for one process, in Redis for replicas). A
replica keeps a copy of each and writes by compare-and-set: read the latest, apply the
change, write; on a lost race read again and re-apply, so no edit is lost. Changes made
through other replicas arrive through :meth:`ServiceState.refresh` (polled, see
``api/app.py``). docs/state.md ("Topology and placement across replicas") has the rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request

from api.feeds import FabricChange, Feeds, build_from_feeds, diff_fabrics, read_shared, shared_text
from api.placement_jobs import (
    CurrentPlacement,
    PlacementJob,
    PlacementTarget,
    SharedJobs,
    surviving,
    violations,
)
from api.routing import Fabric
from api.security import AuthError, Role, TokenAuth, auth_error_handler, require
from api.settings import Settings
from api.snapshots import BlockSizes, LiveSnapshots
from policies.profile import Policy, resolve_policy
from policies.registry import installed_registry
from scheduler.placement import Placement, PlacementRequest
from scheduler.prefix import PrefixIndex
from scheduler.router.cost import CostParams
from scheduler.router.router import Router
from scheduler.state.docs import ABSENT, MemoryDocs, SharedDocs
from scheduler.state.reservations import StoreUnavailableError
from scheduler.telemetry import Telemetry
from topology.distance import DistanceModel
from topology.errors import ConflictError, Issue, NotFoundError, ValidationError
from topology.spec import FabricSpec, load_fabric

log = logging.getLogger(__name__)
#: Names of the shared documents: the feeds with the fabric, and the placement in force.
TOPOLOGY, PLACEMENT = "topology", "placement"
#: Compare-and-set attempts of one write before it gives up (409): each lost attempt
#: means that another replica's write landed in between.
MAX_WRITE_TRIES = 16
#: A topology change: the latest feeds and fabric in, the new ones (None: no change) out.
TopologyEdit = Callable[[Feeds, FabricSpec | None],
                        Awaitable[tuple[Feeds, FabricSpec | None] | None]]


@dataclass(frozen=True)
class RoutingOptions:
    """How the route path reads prefixes: block sizes, approximate mode, prefill caches,
    prefix pulls and their fixed cost (the ``block_tokens``, ``prefix_approx_ttl_s``,
    ``prefill_cache_ttl_s``, ``prefix_pull`` and ``pull_overhead_s`` settings; the
    gateway replaces the last as it learns it)."""

    block_sizes: BlockSizes = field(default_factory=BlockSizes)
    approx_ttl_s: float | None = None
    prefill_ttl_s: float = 0.0
    #: The router may plan prefix pulls (``CostParams.prefix_pull``).
    prefix_pull: bool = False
    #: A pull's fixed cost (``CostParams.pull_overhead_s``).
    pull_overhead_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingOptions:
        """The options a ``toposched serve`` process was started with."""
        return cls(BlockSizes(settings.block_tokens, dict(settings.model_block_tokens)),
                   settings.prefix_approx_ttl_s, settings.prefill_cache_ttl_s,
                   settings.prefix_pull and settings.gateway, settings.pull_overhead_s or 0.0)


class ServiceState:
    """What the topology, placement and route resources share in one process."""

    def __init__(self, policy: Policy, prefix_index: PrefixIndex,
                 spec: FabricSpec | None = None, *, docs: SharedDocs | None = None,
                 poll_s: float = 0.5, routing: RoutingOptions | None = None) -> None:
        self.policy = policy
        self.prefix_index = prefix_index
        self.routing = routing or RoutingOptions()
        self.docs: SharedDocs = docs if docs is not None else MemoryDocs()
        self.feeds = Feeds()
        self.fabric: Fabric | None = self.make_fabric(spec) if spec is not None else None
        self.current: CurrentPlacement | None = None
        self.jobs = SharedJobs(self.docs, flush_s=poll_s)
        self.lock = asyncio.Lock()
        self.snapshots = LiveSnapshots(self.routing.block_sizes)
        #: Where solve times go (the app's telemetry; None in bare service tests).
        self.telemetry: Telemetry | None = None
        #: Told of every new fabric put in force (transfer hints, telemetry labels).
        self.fabric_listeners: list[Callable[[Fabric], None]] = []
        self._start_spec = spec
        #: Version of each shared document that the copies here are current to.
        self._seen = {TOPOLOGY: ABSENT, PLACEMENT: ABSENT}
        self._tasks: set[asyncio.Task[Any]] = set()

    def make_fabric(self, spec: FabricSpec) -> Fabric:
        """A fabric bundle whose router shares the app's prefix index."""
        distance = DistanceModel(spec)
        options = self.routing
        router = Router(distance, self.policy, index=self.prefix_index,
                        predict_ttl_s=options.approx_ttl_s,
                        prefill_ttl_s=options.prefill_ttl_s or None,
                        cost=CostParams(prefix_pull=True,
                                        pull_overhead_s=options.pull_overhead_s)
                        if options.prefix_pull else None)
        return Fabric(spec, distance, router, frozenset(distance.names))

    def require_fabric(self) -> Fabric:
        """The fabric in force (404 before the first one)."""
        if self.fabric is None:
            raise NotFoundError("fabric", "current", "PUT /v1/topology/inventory first")
        return self.fabric

    def background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` after the response, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for every background job (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- following the shared documents -------------------------------------------

    async def start(self) -> None:
        """Load the shared topology and placement before serving; the start-up fabric
        (``--fabric``) is shared only when the store holds no fabric."""
        async with self.lock:
            await self._refresh_locked()
            seed = self._start_spec
            if seed is not None and self.fabric is None:
                async def seeded(feeds: Feeds, spec: FabricSpec | None
                                 ) -> tuple[Feeds, FabricSpec | None] | None:
                    return (feeds, seed) if spec is None else None
                await self._write_topology_locked(seeded)

    async def refresh(self) -> None:
        """Adopt what other replicas wrote since this one last looked (one store read
        when nothing changed). Never re-checks the placement: the writer did."""
        async with self.lock:
            await self._refresh_locked()

    async def _refresh_locked(self) -> None:
        versions = await self.docs.versions([TOPOLOGY, PLACEMENT])
        holding = not self.feeds.is_empty() or self.fabric is not None
        if self._stale(TOPOLOGY, versions, holding):
            await self._load_topology()
        if self._stale(PLACEMENT, versions, self.current is not None):
            await self._load_placement()

    def _stale(self, name: str, versions: dict[str, int], holding: bool) -> bool:
        # A document missing while this replica holds a copy: the store lost it (a
        # flush, a restart without persistence) or never had it (start-up): share ours.
        return versions[name] != self._seen[name] or (versions[name] == ABSENT and holding)

    async def _load_topology(self) -> None:
        found = await self.docs.get(TOPOLOGY)
        if found is None and await self._share(TOPOLOGY, shared_text(self.feeds, self._spec())):
            return
        found = found or await self.docs.get(TOPOLOGY)  # another replica shared first
        if found is not None:
            feeds, spec = await asyncio.to_thread(read_shared, found[1], self.feeds)
            self.feeds = feeds
            self._swap_fabric(spec)
        self._seen[TOPOLOGY] = found[0] if found else ABSENT

    async def _load_placement(self) -> None:
        found = await self.docs.get(PLACEMENT)
        current = self.current
        if found is None and current is not None and await self._share(
                PLACEMENT, current.model_dump_json()):
            return
        found = found or await self.docs.get(PLACEMENT)
        if found is not None:
            self.current = CurrentPlacement.model_validate_json(found[1])
        self._seen[PLACEMENT] = found[0] if found else ABSENT

    async def _share(self, name: str, text: str) -> bool:
        """Put this replica's copy of ``name`` in the store, which has none; False when
        another replica put one first."""
        version = await self.docs.put(name, text, ABSENT)
        if version is not None:
            self._seen[name] = version
        return version is not None

    def _spec(self) -> FabricSpec | None:
        return self.fabric.spec if self.fabric is not None else None

    def _swap_fabric(self, spec: FabricSpec | None) -> None:
        """Put ``spec`` in force unless it is the fabric in force already (kept as is)."""
        if spec is None:
            self.fabric = None
        elif self.fabric is None or self.fabric.spec != spec:
            self.fabric = self.make_fabric(spec)
            for listener in self.fabric_listeners:
                try:
                    listener(self.fabric)
                except Exception:  # the fabric is in force; one listener must not stop the rest
                    log.exception("a fabric listener failed")

    # -- topology -----------------------------------------------------------------

    async def update_feeds(self, edit: Callable[[Feeds], Feeds | None],
                           ) -> tuple[FabricChange, str | None]:
        """Apply ``edit`` to the latest feeds, rebuild the fabric and swap it in; re-check
        the placement.

        ``edit`` returns None when there is nothing new (a re-posted capture). Returns what
        changed and the id of a re-solve job when the placement broke. Until the feeds
        can build a fabric (an inventory, or node labels / a subnet / AWS topology to
        build without one: ``Feeds.buildable``) they are kept for later and nothing
        changes. Failed builds (conflicts, unknown hosts) leave feeds and fabric as they
        were.
        """
        async def rebuilt(feeds: Feeds, spec: FabricSpec | None
                          ) -> tuple[Feeds, FabricSpec | None] | None:
            edited = edit(feeds)
            if edited is None or not edited.buildable():
                return None if edited is None else (edited, spec)
            return edited, await asyncio.to_thread(build_from_feeds, edited)

        async with self.lock:
            written = await self._write_topology_locked(rebuilt)
            if written is None:
                return FabricChange(changed=False), None
            before, after = written
            if after is None or after is before:
                return FabricChange(changed=False), None
            change = diff_fabrics(before, after)
            if not change.changed:
                return change, None
            await self._refresh_locked()  # the placement as it is now, not as last polled
            return change, await self._recheck_locked()

    async def _write_topology_locked(self, edit: TopologyEdit
                                     ) -> tuple[FabricSpec | None, FabricSpec | None] | None:
        """Read the latest topology, ``edit`` it and write it by compare-and-set (again on
        a lost race); the fabric before and after, or None when ``edit`` changed nothing."""
        for _ in range(MAX_WRITE_TRIES):
            await self._refresh_locked()
            before = self._spec()
            edited = await edit(self.feeds, before)
            if edited is None:
                return None
            feeds, spec = edited
            text = await asyncio.to_thread(shared_text, feeds, spec)
            version = await self.docs.put(TOPOLOGY, text, self._seen[TOPOLOGY])
            if version is not None:
                self.feeds, self._seen[TOPOLOGY] = feeds, version
                self._swap_fabric(spec)
                return before, spec
        raise ConflictError(f"the topology changed {MAX_WRITE_TRIES} times during one "
                            "edit (other replicas are writing); retry")

    # -- placement ----------------------------------------------------------------

    async def start_solve(self, target: PlacementTarget) -> PlacementJob:
        """Start a solve on the latest fabric; its result becomes the placement in force."""
        await self.refresh()
        fabric = self.require_fabric()
        job = await self.jobs.new("solve")
        request = target.request(fabric.spec)
        self.background(self._solve(job.id, request, fabric, target, "solve"))
        return job

    async def apply_placement(self, placement: Placement, target: PlacementTarget,
                              source: str) -> CurrentPlacement:
        """Put ``placement`` in force after checking it on the latest fabric (422 otherwise)."""
        async with self.lock:
            await self._refresh_locked()
            fabric = self.require_fabric()
            broken = violations(target, placement, fabric.spec, fabric.distance)
            if broken:
                raise ValidationError(source, [Issue("placement", message) for message in broken])
            current = CurrentPlacement(placement=placement, target=target, origin="apply",
                                       applied_at=time.time())
            await self._put_placement_locked(current)
            return current

    async def _put_placement_locked(self, current: CurrentPlacement) -> None:
        """Share ``current`` (the last writer wins); then re-check it if another replica
        changed the fabric meanwhile: of two replicas writing a fabric and a placement at
        once, at least one sees the other's write, and that one re-checks."""
        checked_on = self._seen[TOPOLOGY]
        text = current.model_dump_json()
        for _ in range(MAX_WRITE_TRIES):
            version = await self.docs.put(PLACEMENT, text, self._seen[PLACEMENT])
            if version is not None:
                self.current, self._seen[PLACEMENT] = current, version
                break
            self._seen[PLACEMENT] = (await self.docs.versions([PLACEMENT]))[PLACEMENT]
        else:
            raise ConflictError("the placement changed too often during one write; retry")
        if (await self.docs.versions([TOPOLOGY]))[TOPOLOGY] != checked_on:
            await self._refresh_locked()
            await self._recheck_locked()

    async def _recheck_locked(self) -> str | None:
        """Start a re-solve when the placement no longer holds on the fabric; its id."""
        current, fabric = self.current, self.fabric
        if current is None or fabric is None:
            return None
        broken = violations(current.target, current.placement, fabric.spec, fabric.distance)
        if not broken:
            return None
        reason = "; ".join(broken[:5])
        log.warning("placement no longer holds: %s", reason)
        try:
            job = await self.jobs.new("re-solve", reason=reason)
        except StoreUnavailableError as exc:
            log.error("could not start a re-solve (%s): %s", exc.detail, reason)
            return None
        kept = surviving(current.placement, fabric.distance)
        request = current.target.request(fabric.spec, current=kept)
        self.background(self._solve(job.id, request, fabric, current.target, "re-solve"))
        return job.id

    async def _solve(self, job_id: str, request: PlacementRequest, fabric: Fabric,
                     target: PlacementTarget, origin: Literal["solve", "re-solve"]) -> None:
        """Run a solve job; its result goes in force unless the fabric changed meanwhile
        (the replica that changed it re-checked the placement)."""
        result = await self.jobs.run(job_id, request, fabric.distance)
        if result is None:
            return
        if self.telemetry is not None:
            self.telemetry.observe_placement(result.solve_time_s, method=result.method)
        current = CurrentPlacement(placement=result, target=target, origin=origin,
                                   applied_at=time.time())
        try:
            async with self.lock:
                await self._refresh_locked()
                if self.fabric is fabric:
                    await self._put_placement_locked(current)
        except (StoreUnavailableError, ConflictError) as exc:
            log.error("placement job %s: result not put in force: %s", job_id, exc)


def install_services(app: FastAPI, settings: Settings) -> None:
    """Build the shared service state and mount the topology/placement/route routers."""
    from api.routers import health, placement, route, topology

    spec = load_fabric(settings.fabric) if settings.fabric else None
    policy = resolve_policy(settings.policy, installed_registry(settings.plugins))
    runtime = getattr(app.state, "runtime", None)
    app.state.services = ServiceState(policy, app.state.prefix_index, spec,
                                      docs=runtime.docs if runtime is not None else None,
                                      poll_s=settings.shared_poll_s,
                                      routing=RoutingOptions.from_settings(settings))
    app.state.services.telemetry = runtime.telemetry if runtime is not None else None
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
