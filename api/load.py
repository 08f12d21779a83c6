"""Load reservations on the route path: atomic across replicas, visible to the policies.

Each worker gets a capacity when it registers (``max_requests`` concurrent requests).
Before a decision the snapshot takes every worker's reserved load from the shared
store; after it, the chosen pair's load is reserved atomically (Redis: one Lua script)
as one *reservation* with an id, an owner and a lifetime, so two replicas never push a
worker past its capacity and nothing stays reserved for ever:

* the prefill worker's part is given back when the request's KV transfer ends (done,
  failed or expired: :meth:`api.runtime.Runtime.transfer_ended`), and with it the KV
  blocks promised on the decode worker (the KV has landed, or never will);
* the rest when the request ends: the decode side's engine releases the transfer
  (``POST /v1/transfers/{id}/release``), or whoever sees the response end (the
  gateway, a client) closes the reservation (``POST /v1/reservations/{id}/release``);
* otherwise the sweep closes it when its lifetime (``reservation_ttl_s``) ends, or
  when its owner (the replica that routed it) stops renewing its lease.

The decode worker's part also carries the request's context (:func:`context_tokens`):
the store sums it per worker while the request's KV is there (from the route on for a
local prefill, from when the KV lands otherwise: until then its promised blocks stand
for it), and the snapshot hands the sum to the cost model as ``Worker.context_tokens``
— the tokens a decode step there reads, which its blocks in use understate where
several requests share a prefix.
"""

from __future__ import annotations

import math
import uuid

from scheduler.router.cost import CostParams
from scheduler.router.router import Decision
from scheduler.state.reservations import LoadItem, LoadStore
from topology.errors import UnschedulableError

#: Concurrent requests a worker takes unless it says otherwise.
DEFAULT_MAX_REQUESTS = 256
#: Queued prompt tokens a worker takes (bounds the prefill queue a router may build).
DEFAULT_MAX_TOKENS = 4_000_000
#: The cost model's figures (expected output) for the blocks a route promises.
_COST = CostParams()


async def register_capacity(loads: LoadStore, worker: str) -> None:
    """Give a (re-)registered worker its capacity."""
    await loads.set_capacity(worker, DEFAULT_MAX_TOKENS, DEFAULT_MAX_REQUESTS)


def promised_blocks(prompt_blocks: int, block_tokens: int) -> int:
    """KV blocks a request will take on its decode worker once its KV lands there:
    ``prompt_blocks`` (those not taken from its free list yet) and its expected output
    (:meth:`CostParams.promised_blocks`)."""
    return _COST.promised_blocks(prompt_blocks, block_tokens)


def context_tokens(prompt_tokens: int, max_tokens: int | None = None) -> int:
    """The context a request reads per decode step, on average over its decode: its
    prompt and half the output it is expected to write (``expected_output_tokens``, or
    ``max_tokens`` where the request allows fewer). A sequence reads its prompt and the
    tokens written so far at each step, so over its decode it reads the prompt plus half
    its output on average — what a worker whose requests are at all stages of their
    decode reads per request (the simulator counts each request's context as it is now);
    the whole output would price every request as if it were at its last step."""
    output = _COST.expected_output_tokens
    if max_tokens is not None and max_tokens < output:  # (a client's int may pass a double)
        output = max_tokens
    return prompt_tokens + math.ceil(output / 2)


def reservations_for(decision: Decision, prompt_tokens: int, *, block_tokens: int,
                     blocks_taken: bool = False, max_tokens: int | None = None
                     ) -> list[LoadItem]:
    """Prefill: the tokens it must compute; decode: one running request, its context
    (:func:`context_tokens`) and, when the prefill runs elsewhere, the KV blocks it will
    take there (:func:`promised_blocks`; ``blocks_taken``: the transfer's blocks come out
    of its free list at once, as the sidecar path does, so only the output is promised).
    A local prefill promises nothing: the decode worker's own engine allocates as it
    goes."""
    cached = decision.prefill.cached_blocks
    total_blocks = max(len(decision.transfer.block_hashes) + decision.decode.cached_blocks,
                       cached, 1)
    uncached = max(prompt_tokens - prompt_tokens * cached // total_blocks, 0)
    context = context_tokens(prompt_tokens, max_tokens)
    if decision.mode == "local-prefill":
        return [LoadItem(worker=decision.decode.worker, tokens=uncached, requests=1,
                         context=context)]
    prompt = 0 if blocks_taken else decision.transfer.blocks
    remote = decision.prefill.worker != decision.decode.worker
    return [LoadItem(worker=decision.prefill.worker, tokens=uncached, requests=1),
            LoadItem(worker=decision.decode.worker, tokens=0, requests=1,
                     blocks=promised_blocks(prompt, block_tokens) if remote else 0,
                     context=context)]


def new_reservation_id() -> str:
    """A fresh reservation id."""
    return f"rsv-{uuid.uuid4().hex[:20]}"


async def reserve(loads: LoadStore, reservation_id: str, owner: str,
                  items: list[LoadItem], ttl_s: float) -> None:
    """Reserve all or nothing, in one store step; a worker at capacity makes the request
    unschedulable."""
    full = await loads.open_reservation(reservation_id, owner, items, ttl_s)
    if full is not None:
        raise UnschedulableError([f"worker {full} is at capacity (another replica took its "
                                  "last slot); retry"])
