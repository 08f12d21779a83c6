"""What the page's reads share: the fabric index, who runs where, the placement's
last change, and a version that changes whenever any of them does.

Everything is derived from the service's own state on demand (the fabric in force,
the placement in force, the registered workers) and cached by identity, so an idle
page costs one worker listing per stream tick and nothing on the route path.
"""

from __future__ import annotations

import logging
import operator
import secrets
from typing import Any

from api.placement_jobs import PlacementJob
from api.routing import Fabric
from api.runtime import Runtime
from api.service import ServiceState
from api.ui.decisions import RecentDecisions
from api.ui.fabric_view import FabricIndex, Occupancy
from api.ui.placement_view import PlacementTracker, placement_view
from api.ui.traffic import traffic_frame
from scheduler.state.base import TransferStore
from scheduler.state.reservations import StoreUnavailableError
from scheduler.transfer.plan import WorkerRegistration

log = logging.getLogger(__name__)


class UiState:
    """The page's view of one replica (see the module docstring)."""

    def __init__(self, services: ServiceState, runtime: Runtime, store: TransferStore,
                 decisions: RecentDecisions) -> None:
        self.services = services
        self.runtime = runtime
        self.store = store
        self.decisions = decisions
        self.tracker = PlacementTracker()
        self.last_job: PlacementJob | None = None
        self._fabric: Fabric | None = None
        self._index: FabricIndex | None = None
        self._fabric_version = 0
        self._regs: list[WorkerRegistration] = []
        self._occupancy: Occupancy | None = None
        self._occupancy_version = 0
        self._placement_version = -1
        #: Tells this process's versions and decision numbers from another's (a restarted
        #: or different replica), so that a reconnecting page starts afresh.
        self.boot = secrets.token_hex(4)

    async def view(self) -> tuple[FabricIndex, Occupancy, str] | None:
        """The fabric in force (None before the first), who runs where, and the version
        of both."""
        fabric = self.services.fabric
        if fabric is None:
            return None
        if fabric is not self._fabric:
            self._fabric, self._index = fabric, FabricIndex(fabric.spec)
            self._fabric_version += 1
        regs = await self._registrations()
        await self.observe_placement()
        if self._occupancy is None or self._placement_version != self.tracker.version or \
                not _same_objects(regs, self._regs):
            current = self.tracker.seen
            self._occupancy = Occupancy(current.placement if current else None, regs)
            self._regs, self._placement_version = regs, self.tracker.version
            self._occupancy_version += 1
        assert self._index is not None
        version = f"{self.boot}.{self._fabric_version}.{self._occupancy_version}"
        return self._index, self._occupancy, version

    async def _registrations(self) -> list[WorkerRegistration]:
        try:
            return [entry.registration for entry in await self.store.list_workers()]
        except StoreUnavailableError as exc:  # show what was known; the page stays up
            log.warning("workers unavailable for the page: %s", exc.detail)
            return self._regs

    async def observe_placement(self) -> bool:
        """Note the placement in force; True (and the last job looked up) when it changed."""
        if not self.tracker.observe(self.services.current):
            return False
        try:
            jobs = await self.services.jobs.all()
        except StoreUnavailableError as exc:
            log.warning("placement jobs unavailable for the page: %s", exc.detail)
            jobs = []
        self.last_job = jobs[-1] if jobs else None
        return True

    def placement(self) -> dict[str, Any] | None:
        """The placement in force and its last change, as the page shows them."""
        return placement_view(self.tracker, self.last_job)

    def traffic(self) -> dict[str, Any]:
        """The traffic panels' data."""
        fabric = self.services.fabric
        return traffic_frame(self.runtime, fabric.distance if fabric is not None else None)


def _same_objects(a: list[Any], b: list[Any]) -> bool:
    """Equal lists, by identity first (the stores hand back the objects they keep)."""
    return len(a) == len(b) and (all(map(operator.is_, a, b)) or a == b)
