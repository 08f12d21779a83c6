"""The load one gateway request holds, given back as each engine is done with it.

Reserved when the request is routed (all or nothing, shared across replicas through
the store): the prefill engine's uncached prompt tokens and one request, the decode
engine's one request (decode-only: the uncached tokens too). The prefill part goes
back when the prefill leg ends, the rest when the response ends, fails or the client
leaves — every path through :mod:`api.gateway.relay` ends in :meth:`Held.release_all`.
"""

from __future__ import annotations

from api.gateway.decide import Route
from api.load import Reservation, release, reserve
from scheduler.state.reservations import LoadStore


def reservations_of(route: Route) -> tuple[Reservation | None, Reservation]:
    """(prefill part or None, decode part) of ``route``."""
    uncached = route.uncached_tokens
    if route.prefill is None:
        return None, Reservation(worker=route.decode.name, tokens=uncached, requests=1)
    return (Reservation(worker=route.prefill.name, tokens=uncached, requests=1),
            Reservation(worker=route.decode.name, tokens=0, requests=1))


class Held:
    """Reserved load of one request; each part is released once."""

    def __init__(self, loads: LoadStore, route: Route) -> None:
        """Not reserved yet: call :meth:`reserve`."""
        self.loads = loads
        self.prefill: Reservation | None
        self.decode: Reservation | None
        self.prefill, self.decode = reservations_of(route)

    async def reserve(self) -> None:
        """Reserve both parts in one store step (unschedulable when a side is full)."""
        await reserve(self.loads, [r for r in (self.prefill, self.decode) if r is not None])

    async def release_prefill(self) -> None:
        """The prefill leg ended."""
        part, self.prefill = self.prefill, None
        if part is not None:
            await release(self.loads, [part])

    async def release_all(self) -> None:
        """The request ended (any way)."""
        parts = [r for r in (self.prefill, self.decode) if r is not None]
        self.prefill = self.decode = None
        if parts:
            await release(self.loads, parts)
