"""The load one gateway request holds, given back as each engine is done with it.

Reserved when the request is routed, as one reservation (:mod:`api.load`) owned by this
replica, all or nothing and shared across replicas through the store: the prefill
engine's uncached prompt tokens and one request, the decode engine's one request and
the KV blocks it will take for the prompt and the expected output (decode-only: the
uncached tokens instead, no promise), and the request's context
(:func:`api.load.context_tokens`, counted in the decode engine's load once its KV is
there). The prefill part, and the promised blocks, go back when the prefill leg ends
(the decode engine pulls the KV then), the rest when
the response ends, fails or the client leaves — every path
through :mod:`api.gateway.relay` ends in :meth:`Held.release_all`. Should this replica
die first, its owner lease lapses and the sweep closes the reservation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from api.gateway.decide import Route
from api.load import context_tokens, new_reservation_id, promised_blocks, reserve
from scheduler.state.reservations import LoadItem, LoadStore


def reservations_of(route: Route, max_tokens: int | None = None
                    ) -> tuple[LoadItem | None, LoadItem]:
    """(prefill part or None, decode part) of ``route`` (``max_tokens``: the most output
    the request allows, when it says)."""
    uncached = route.uncached_tokens
    context = context_tokens(route.prompt_tokens, max_tokens)
    if route.prefill is None:
        return None, LoadItem(worker=route.decode.name, tokens=uncached, requests=1,
                              context=context)
    lacks = route.decision.transfer.blocks
    return (LoadItem(worker=route.prefill.name, tokens=uncached, requests=1),
            LoadItem(worker=route.decode.name, tokens=0, requests=1,
                     blocks=promised_blocks(lacks, route.block_tokens), context=context))


def output_limit(body: Mapping[str, Any]) -> int | None:
    """The most tokens an OpenAI request body lets the engine write
    (``max_completion_tokens``, else ``max_tokens``), when it says: a positive int, or a
    positive whole-number float such as ``5.0`` (vLLM's request models take those as
    ints too); anything else is the engine's to refuse."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class Held:
    """Reserved load of one request; each part is released once."""

    def __init__(self, loads: LoadStore, route: Route, *, owner: str, ttl_s: float,
                 max_tokens: int | None = None) -> None:
        """Not reserved yet: call :meth:`reserve` (``max_tokens``: :func:`output_limit`)."""
        self.loads, self.owner, self.ttl_s = loads, owner, ttl_s
        self.id = new_reservation_id()
        self.prefill: LoadItem | None
        self.decode: LoadItem | None
        self.prefill, self.decode = reservations_of(route, max_tokens)

    async def reserve(self) -> None:
        """Reserve both parts in one store step (unschedulable when a side is full)."""
        items = [r for r in (self.prefill, self.decode) if r is not None]
        await reserve(self.loads, self.id, self.owner, items, self.ttl_s)

    async def release_prefill(self) -> None:
        """The prefill leg ended (its KV goes to the decode engine now)."""
        part, self.prefill = self.prefill, None
        if part is not None:
            await self.loads.close_reservation(self.id, [part.worker], landed=True,
                                               report=False)

    async def release_all(self) -> None:
        """The request ended (any way)."""
        if self.prefill is None and self.decode is None:
            return
        self.prefill = self.decode = None
        await self.loads.close_reservation(self.id, report=False)
