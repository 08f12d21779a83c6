"""Load reservations on the route path: atomic across replicas, visible to the policies.

Each worker gets a capacity when it registers (``max_requests`` concurrent requests).
Before a decision the snapshot takes every worker's reserved load from the shared
store; after it, the chosen pair is reserved atomically (Redis: one Lua script), so two
replicas never push a worker past its capacity. Whoever sees a request leave a worker
(the engine's integration, the gateway, the demo) releases it with
``POST /v1/workers/{name}/load/release``.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from scheduler.router.router import Decision
from scheduler.state.reservations import LoadStore
from topology.errors import UnschedulableError

#: Concurrent requests a worker takes unless it says otherwise.
DEFAULT_MAX_REQUESTS = 256
#: Queued prompt tokens a worker takes (bounds the prefill queue a router may build).
DEFAULT_MAX_TOKENS = 4_000_000


class Reservation(BaseModel):
    """What one decision reserved, to be released when the request leaves each worker."""

    model_config = ConfigDict(frozen=True)

    worker: str
    tokens: int = Field(ge=0)
    requests: int = Field(ge=0)


async def register_capacity(loads: LoadStore, worker: str) -> None:
    """Give a (re-)registered worker its capacity."""
    await loads.set_capacity(worker, DEFAULT_MAX_TOKENS, DEFAULT_MAX_REQUESTS)


def reservations_for(decision: Decision, prompt_tokens: int) -> list[Reservation]:
    """Prefill: the tokens it must compute; decode: one running request."""
    cached = decision.prefill.cached_blocks
    total_blocks = max(len(decision.transfer.block_hashes) + decision.decode.cached_blocks,
                       cached, 1)
    uncached = max(prompt_tokens - prompt_tokens * cached // total_blocks, 0)
    if decision.mode == "local-prefill":
        return [Reservation(worker=decision.decode.worker, tokens=uncached, requests=1)]
    return [Reservation(worker=decision.prefill.worker, tokens=uncached, requests=1),
            Reservation(worker=decision.decode.worker, tokens=0, requests=1)]


async def release(loads: LoadStore, reservations: Sequence[Reservation]) -> None:
    """Give reserved load back (a request left its workers, or its route failed)."""
    for item in reservations:
        await loads.release(item.worker, item.tokens, item.requests)


async def reserve(loads: LoadStore, reservations: Sequence[Reservation]) -> None:
    """Reserve all or nothing, in one store step; a worker at capacity makes the request
    unschedulable."""
    full = await loads.reserve_all([(r.worker, r.tokens, r.requests) for r in reservations])
    if full is not None:
        raise UnschedulableError([f"worker {full} is at capacity (another replica took its "
                                  "last slot); retry"])
