"""The routing decision over live state, shared by ``POST /v1/route`` and the gateway.

One path for both front doors: a snapshot of the workers (the sidecar-registered
listing, if any) and of the engine instances in routing (the registry's: their own
load figures merged with the reservations), with the placement's pairings and the
transfers in flight on shared links, scored by the service's router. The route path
passes the whole listing; the OpenAI gateway, which can only send requests to engine
instances, passes none and keeps its own snapshot cache (:class:`LiveSnapshots` keeps
one listing per model, and the two would otherwise evict each other).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from api.routing import kv_bytes_for
from api.runtime import Runtime
from api.service import ServiceState
from api.snapshots import Journaled, LiveSnapshots
from engines.registry import EngineRegistry
from policies.snapshot import Snapshot
from scheduler.router.router import Decision, RouteRequest, Unschedulable
from scheduler.state.base import WorkerEntry
from scheduler.state.reservations import WorkerLoad
from topology.errors import NotFoundError

#: Worker counts from which the decision yields to the event loop between its passes
#: over the workers; below, each pass takes microseconds and a yield (a loop iteration,
#: 10-20 us on a busy host) would cost more than it spares the requests waiting.
YIELD_FROM = 256


async def decide(request: RouteRequest, services: ServiceState, runtime: Runtime,
                 engines: EngineRegistry, *, entries: Sequence[WorkerEntry],
                 loads: Mapping[str, WorkerLoad], snapshots: LiveSnapshots | None = None,
                 journaled: Journaled | None = None
                 ) -> tuple[Decision | Unschedulable, Snapshot]:
    """The decision for ``request`` and the snapshot it was made on (its block size is
    what prompts were hashed with: the engines' when instances serve the model, else
    what the workers registered or the settings say). With ``journaled`` stores, the
    workers are read from them by name as they change (``entries`` unused; ``loads``
    may be a live view), not from a listing of all of them."""
    fabric = services.fabric
    if fabric is None:
        raise NotFoundError("fabric", "current", "PUT /v1/topology/inventory first")
    started = time.perf_counter()
    current = services.current
    model = request.model
    # Each step below is a pass over every worker (10,000: milliseconds each) and the
    # memory store's awaits never suspend: let the loop answer what is waiting (health
    # probes, heartbeats) between them, so that a stall is one step, not the request.
    # The size is known before the snapshot from the listing, the engines and the last
    # snapshot (journaled stores pass no listing).
    live = snapshots or services.snapshots
    big = max(len(entries) + engines.size(), live.last_size) >= YIELD_FROM
    if big:
        await let_others_run()
    snapshot = await live.current(
        fabric, entries, loads, model, kv_bytes=kv_bytes_for(model),
        pairings=current.placement.pairings if current else (),
        link_load=runtime.inflight.transfers_by_link(),
        engines=engines.workers(model, loads), block_tokens=engines.block_size(model),
        journaled=journaled)
    live.last_size = len(snapshot.workers)
    if big or live.last_size >= YIELD_FROM:
        await let_others_run()
    result = fabric.router.route(request, snapshot) if snapshot.workers else \
        Unschedulable(request_id=request.request_id, policy=services.policy.name,
                      reasons=(f"no registered worker on the fabric serves {model}",))
    if isinstance(result, Unschedulable):
        result = _with_drains(result, live.drained(fabric, model), model, snapshot)
    runtime.telemetry.observe_routing(time.perf_counter() - started)
    runtime.decisions.add(result)  # a reference for the page (/ui); serialised only there
    return result, snapshot


def _with_drains(result: Unschedulable, drained: Mapping[str, int], model: str | None,
                 snapshot: Snapshot) -> Unschedulable:
    """``result`` saying first that workers serving ``model`` are draining, how many by
    role (``drained``), when any are: the reason nothing (or no pair) is left to route
    to, rather than none being registered."""
    if not drained:
        return result
    total = sum(drained.values())
    roles = ", ".join(f"{n} {role}" for role, n in sorted(drained.items()))
    subject = f"every worker serving {model} on the fabric is draining" \
        if not snapshot.workers else f"{total} of the workers serving {model} are draining"
    reason = (f"{subject} ({total}: {roles}); a draining worker takes no new request "
              "until its sidecar registers again")
    rest = result.reasons if snapshot.workers else ()
    return result.model_copy(update={"reasons": (reason, *rest)})


async def let_others_run() -> None:
    """One event-loop iteration for the other tasks (between passes over the workers)."""
    await asyncio.sleep(0)
