"""Load reservations and the KV event log shared by router replicas, in memory.

Two small protocols sit next to :class:`~scheduler.state.base.TransferStore`:

* :class:`LoadStore` — each worker has a capacity (tokens, requests); ``reserve``
  checks it and adds the load in one step, so two replicas routing at the same time
  never oversubscribe a worker. A *reservation* (:meth:`LoadStore.open_reservation`)
  does the same under an id, for an owner and a lifetime: closing it gives back
  exactly what it holds (once, whoever closes it), and the sweep
  (:meth:`LoadStore.expire_reservations`) closes it when its lifetime ends or its
  owner's lease lapses, so load never leaks (docs/state.md, "Load reservations").
* :class:`KvEventLog` — an append-only, capped log of KV events (JSON text). Every
  replica reads it from its last id and feeds its own
  :class:`~scheduler.prefix.PrefixIndex` (the decision is argued in docs/state.md).

:class:`MemoryLoads` implements both for one process; the Redis store implements both
for many (:mod:`scheduler.state.redis_store`). :class:`StoreUnavailableError` lives here,
not beside Redis, so that callers can catch it without importing the Redis client.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from scheduler.state.journal import Journal
from topology.errors import Issue, NotFoundError, ToposchedError, ValidationError

#: Events kept by a log before the oldest are dropped (Redis trims approximately).
DEFAULT_EVENT_MAXLEN = 100_000
#: Id that reads a log from its start.
FIRST_EVENT_ID = "0"


class StoreUnavailableError(ToposchedError):
    """The shared store cannot be reached now; retry after ``retry_after_s`` (→ 503)."""

    title = "state store unavailable"

    def __init__(self, operation: str, detail: str, retry_after_s: float = 1.0) -> None:
        self.operation = operation
        self.detail = detail
        self.retry_after_s = retry_after_s
        super().__init__(f"state store unavailable during {operation}: {detail}")


class WorkerLoad(BaseModel):
    """A worker's reserved load next to its capacity."""

    model_config = ConfigDict(frozen=True)

    tokens: int = Field(ge=0)
    requests: int = Field(ge=0)
    max_tokens: int = Field(ge=0)
    max_requests: int = Field(ge=0)
    blocks: int = Field(default=0, ge=0, description="KV blocks promised to requests routed "
                                                     "here whose KV has not landed yet")
    context: int = Field(default=0, ge=0, description="context tokens the requests decoding "
                                                      "here read per step, summed")

    def fits(self, tokens: int, requests: int) -> bool:
        """Whether ``tokens`` / ``requests`` more stay within the capacity."""
        return (self.tokens + tokens <= self.max_tokens
                and self.requests + requests <= self.max_requests)


class LoadItem(BaseModel):
    """Load held on one worker: prompt tokens still to compute, running requests and KV
    blocks promised to a request whose KV has not landed there yet (``blocks``; given
    back when it lands, :meth:`LoadStore.close_reservation` with ``landed``).

    ``context``: the context tokens the request reads per decode step there (a decode
    worker's item). It counts in the worker's :attr:`WorkerLoad.context` while the
    request's KV is on the worker: from the reservation on when nothing is promised,
    else from when its KV lands (its promised blocks given back) — before that the
    promised blocks stand for the same tokens — until the item is closed."""

    model_config = ConfigDict(frozen=True)

    worker: str
    tokens: int = Field(ge=0)
    requests: int = Field(ge=0)
    blocks: int = Field(default=0, ge=0)
    context: int = Field(default=0, ge=0)


class Reservation(BaseModel):
    """Load reserved for one request until it is closed or ``expires_at`` passes."""

    model_config = ConfigDict(frozen=True)

    id: str
    owner: str = Field(description="who holds it (a replica, a gateway process); when "
                                   "the owner's lease lapses the reservation is closed")
    items: tuple[LoadItem, ...]
    expires_at: float = Field(description="store clock (unix time by default)")


class LoadStore(Protocol):
    """Per-worker load reservations, atomic across scheduler replicas."""

    async def set_capacity(self, worker: str, max_tokens: int, max_requests: int) -> None:
        """Declare (or change) a worker's capacity; its current load is kept."""

    async def reserve(self, worker: str, tokens: int, requests: int = 1) -> bool:
        """Add the load if it fits the worker's capacity; False (and nothing added) if not."""

    async def reserve_all(self, items: Sequence[tuple[str, int, int]]) -> str | None:
        """Reserve ``(worker, tokens, requests)`` items all or nothing, in one step (amounts
        on one worker add up); None when reserved, else the first worker that is full
        (and nothing added). An unknown worker raises :class:`NotFoundError`."""

    async def release(self, worker: str, tokens: int, requests: int = 1) -> None:
        """Take load back (never below zero); unknown workers are ignored."""

    async def loads(self) -> dict[str, WorkerLoad]:
        """Every worker with a capacity, by name."""

    async def drop_load(self, worker: str) -> bool:
        """Forget a worker's capacity and load; False when it had none."""

    async def open_reservation(self, reservation_id: str, owner: str,
                               items: Sequence[LoadItem], ttl_s: float) -> str | None:
        """Reserve ``items`` as :meth:`reserve_all` does and keep them under
        ``reservation_id`` for ``owner`` until closed or ``ttl_s`` passes; None when
        reserved (also when the id is open already: a retried call), else the first full
        worker (nothing reserved)."""

    async def close_reservation(self, reservation_id: str,
                                workers: Sequence[str] | None = None, *,
                                landed: bool = False, report: bool = True) -> list[LoadItem]:
        """Give back the reservation's items on ``workers`` (None: all) and forget them;
        the reservation ends with its last item. ``landed``: the request's KV is on its
        decode worker now, so the promised blocks of the items kept are given back too
        (returned as items of blocks only) and their context starts to count. Returns
        what was given back (empty when the reservation is not open: closed or expired
        already; always empty with ``report`` false, for callers that drop it: the
        gateway, twice a request)."""

    async def renew_reservation(self, reservation_id: str, ttl_s: float) -> Reservation:
        """Move an open reservation's end to ``ttl_s`` from now (:class:`NotFoundError`
        when it is not open)."""

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """An open reservation (:class:`NotFoundError` when it is not open)."""

    async def renew_owner(self, owner: str, ttl_s: float) -> None:
        """Extend ``owner``'s lease by ``ttl_s``: once it lapses, the sweep closes every
        reservation of the owner. An owner that never renews has no lease (its
        reservations end by their own lifetime only)."""

    async def expire_reservations(self) -> list[Reservation]:
        """Close every reservation whose lifetime ended or whose owner's lease lapsed;
        returns them as they were (each reported by exactly one caller)."""


class KvEventLog(Protocol):
    """A capped, ordered log of KV events (JSON text) read by every replica."""

    async def publish_kv_event(self, event_json: str) -> str:
        """Append one event; returns its id (ids grow; compare only for equality)."""

    async def kv_events_since(self, last_id: str, block_ms: int,
                              count: int = 1000) -> tuple[list[str], str]:
        """Up to ``count`` events after ``last_id`` (``"0"``: from the start), waiting up
        to ``block_ms`` for the first one (``0``: do not wait); returns them with the id
        to pass next time (``last_id`` itself when none came)."""


def wanted(items: Sequence[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
    """Tokens and requests per worker, summed over ``items`` (negative amounts rejected)."""
    total: dict[str, tuple[int, int]] = {}
    for worker, tokens, requests in items:
        check_amounts(tokens, requests)
        have = total.get(worker, (0, 0))
        total[worker] = (have[0] + tokens, have[1] + requests)
    return total


def check_amounts(tokens: int, requests: int) -> None:
    """Reject negative amounts (a negative reservation would raise the capacity)."""
    if tokens < 0 or requests < 0:
        raise ValidationError("load reservation", [
            Issue(name, "must be ≥ 0") for name, value in
            (("tokens", tokens), ("requests", requests)) if value < 0])


#: One item at rest: worker, tokens, requests, promised blocks, context tokens (counted
#: in the worker's load while its promised blocks are 0: :class:`LoadItem`).
_Row = tuple[str, int, int, int, int]
#: A reservation at rest in memory: owner, (rows, …), deadline. Tuples of strings and
#: numbers, not models: the garbage collector stops walking them.
_Held = tuple[str, tuple[_Row, ...], float]


#: Tokens, requests, promised blocks and counted context tokens of one worker.
_Amounts = tuple[int, int, int, int]


def _counted(row: _Row) -> int:
    """The context of ``row`` that counts in its worker's load now (none while blocks are
    promised: they stand for it until the KV lands)."""
    return 0 if row[3] else row[4]


def _totals(rows: Sequence[_Row]) -> dict[str, _Amounts]:
    """Tokens, requests, promised blocks and counted context per worker, summed over
    ``rows`` (negative amounts rejected)."""
    total: dict[str, _Amounts] = {}
    for row in rows:
        worker, tokens, requests, blocks, _ = row
        check_amounts(tokens, requests)
        have = total.get(worker, (0, 0, 0, 0))
        total[worker] = (have[0] + tokens, have[1] + requests, have[2] + blocks,
                         have[3] + _counted(row))
    return total


def _item(row: _Row) -> LoadItem:
    return LoadItem(worker=row[0], tokens=row[1], requests=row[2], blocks=row[3],
                    context=row[4])


def _reservation(reservation_id: str, held: _Held) -> Reservation:
    owner, items, expires = held
    return Reservation(id=reservation_id, owner=owner, expires_at=expires,
                       items=tuple(map(_item, items)))


class MemoryLoads:
    """:class:`LoadStore` and :class:`KvEventLog` in process memory (one event loop)."""

    def __init__(self, *, event_maxlen: int = DEFAULT_EVENT_MAXLEN,
                 clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._held: dict[str, _Held] = {}
        #: (deadline, id) of every open reservation; stale entries (renewed or closed
        #: reservations) are skipped when they come up.
        self._due: list[tuple[float, str]] = []
        self._owned: dict[str, set[str]] = {}
        self._owners: dict[str, float] = {}
        self._loads: dict[str, WorkerLoad] = {}
        #: Every worker whose load changed, for readers that catch up by name.
        self.journal = Journal()
        self._events: deque[tuple[int, str]] = deque(maxlen=event_maxlen)
        self._next_id = 1
        self._appended = asyncio.Condition()

    async def set_capacity(self, worker: str, max_tokens: int, max_requests: int) -> None:
        """Declare (or change) a worker's capacity; its current load is kept."""
        check_amounts(max_tokens, max_requests)
        old = self._loads.get(worker)
        self.journal.touch(worker)
        self._loads[worker] = WorkerLoad(tokens=old.tokens if old else 0,
                                         requests=old.requests if old else 0,
                                         max_tokens=max_tokens, max_requests=max_requests,
                                         blocks=old.blocks if old else 0,
                                         context=old.context if old else 0)

    async def reserve(self, worker: str, tokens: int, requests: int = 1) -> bool:
        """Add the load if it fits the worker's capacity; False (and nothing added) if not."""
        return await self.reserve_all([(worker, tokens, requests)]) is None

    async def reserve_all(self, items: Sequence[tuple[str, int, int]]) -> str | None:
        """Reserve every item or none; None when reserved, else the first full worker."""
        return self._reserve({worker: (tokens, requests, 0, 0)
                              for worker, (tokens, requests) in wanted(items).items()})

    def _reserve(self, total: Mapping[str, _Amounts]) -> str | None:
        """Add each worker's (tokens, requests, promised blocks, context) if every one
        fits; else the first full worker (nothing added)."""
        loads = self._loads
        for worker, (tokens, requests, _, _) in total.items():
            load = loads.get(worker)
            if load is None:
                raise NotFoundError("worker", worker, "set its capacity first")
            if not load.fits(tokens, requests):
                return worker
        for worker, (tokens, requests, blocks, context) in total.items():
            self._change(worker, loads[worker], tokens, requests, blocks, context)
        return None

    async def release(self, worker: str, tokens: int, requests: int = 1) -> None:
        """Take load back (never below zero); unknown workers are ignored."""
        check_amounts(tokens, requests)
        load = self._loads.get(worker)
        if load is not None:
            self._change(worker, load, -tokens, -requests, 0, 0)

    def _change(self, worker: str, load: WorkerLoad, tokens: int, requests: int,
                blocks: int, context: int) -> None:
        """Add the amounts (negative: give back, each never below zero) to ``worker``'s
        ``load`` as one new :class:`WorkerLoad`: one object and one journal entry a
        worker and step (a gateway request made seven ``model_copy`` copies, each slower
        than validating the five numbers)."""
        self.journal.touch(worker)
        self._loads[worker] = WorkerLoad(
            tokens=max(0, load.tokens + tokens), requests=max(0, load.requests + requests),
            max_tokens=load.max_tokens, max_requests=load.max_requests,
            blocks=max(0, load.blocks + blocks), context=max(0, load.context + context))

    async def loads(self) -> dict[str, WorkerLoad]:
        """Every worker with a capacity, by name."""
        # in no particular order: sorting 10,000 names after each new worker cost ~20 ms
        return dict(self._loads)

    def live(self) -> Mapping[str, WorkerLoad]:
        """Every worker's load as a read-only view that follows changes (no copy)."""
        return MappingProxyType(self._loads)

    def load(self, worker: str) -> WorkerLoad | None:
        """One worker's load (None: no capacity set)."""
        return self._loads.get(worker)

    async def drop_load(self, worker: str) -> bool:
        """Forget a worker's capacity and load; False when it had none."""
        self.journal.touch(worker)
        return self._loads.pop(worker, None) is not None

    async def open_reservation(self, reservation_id: str, owner: str,
                               items: Sequence[LoadItem], ttl_s: float) -> str | None:
        """Reserve ``items`` under ``reservation_id`` for ``owner``, for ``ttl_s``."""
        if reservation_id in self._held:
            return None
        rows = tuple((i.worker, i.tokens, i.requests, i.blocks, i.context) for i in items)
        full = self._reserve(_totals(rows))
        if full is None:
            expires = self._clock() + ttl_s
            self._held[reservation_id] = (owner, rows, expires)
            self._push_due(expires, reservation_id)
            self._owned.setdefault(owner, set()).add(reservation_id)
        return full

    def _push_due(self, expires: float, reservation_id: str) -> None:
        """Queue a deadline; drop the stale ones when they outnumber the open reservations
        (most requests end long before their lifetime: the heap would keep them all)."""
        heapq.heappush(self._due, (expires, reservation_id))
        if len(self._due) > 2 * len(self._held) + 1024:
            self._due = [(held[2], rid) for rid, held in self._held.items()]
            heapq.heapify(self._due)

    async def close_reservation(self, reservation_id: str,
                                workers: Sequence[str] | None = None, *,
                                landed: bool = False, report: bool = True) -> list[LoadItem]:
        """Give back the reservation's items on ``workers`` (None: all); ``landed``: the
        promised blocks of the others too (their context counts from now on);
        ``report``: return them."""
        held = self._held.get(reservation_id)
        if held is None:
            return []
        owner, rows, expires = held
        picked = [row for row in rows if workers is None or row[0] in workers]
        rest = tuple(row for row in rows if workers is not None and row[0] not in workers)
        # (row given back, context to add): a closed row takes back what counted of its
        # context; a landing row gives back its blocks and its context starts to count
        changes = [(row, -_counted(row)) for row in picked]
        if landed:
            changes += [((w, 0, 0, b, 0), c) for w, _, _, b, c in rest if b]
            rest = tuple((w, t, r, 0, c) for w, t, r, _, c in rest)
        for (worker, tokens, requests, blocks, _), context in changes:
            load = self._loads.get(worker)
            if load is not None:
                self._change(worker, load, -tokens, -requests, -blocks, context)
        if rest:
            self._held[reservation_id] = (owner, rest, expires)
        else:
            del self._held[reservation_id]
            self._owned.get(owner, set()).discard(reservation_id)
        return [_item(row) for row, _ in changes] if report else []

    async def renew_reservation(self, reservation_id: str, ttl_s: float) -> Reservation:
        """Move an open reservation's end to ``ttl_s`` from now."""
        owner, rows, _ = self._open(reservation_id)
        expires = self._clock() + ttl_s
        self._held[reservation_id] = (owner, rows, expires)
        self._push_due(expires, reservation_id)
        return _reservation(reservation_id, self._held[reservation_id])

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """An open reservation."""
        return _reservation(reservation_id, self._open(reservation_id))

    def _open(self, reservation_id: str) -> _Held:
        held = self._held.get(reservation_id)
        if held is None:
            raise NotFoundError("reservation", reservation_id,
                                "it was closed or expired (its load is given back)")
        return held

    async def renew_owner(self, owner: str, ttl_s: float) -> None:
        """Extend ``owner``'s lease by ``ttl_s``."""
        self._owners[owner] = self._clock() + ttl_s

    async def expire_reservations(self) -> list[Reservation]:
        """Close reservations past their end or of owners whose lease lapsed."""
        now, gone = self._clock(), []
        while self._due and self._due[0][0] <= now:
            expires, reservation_id = heapq.heappop(self._due)
            held = self._held.get(reservation_id)
            if held is not None and held[2] == expires:
                gone.append(await self._close_all(reservation_id, held))
        for owner in [o for o, deadline in self._owners.items() if deadline <= now]:
            del self._owners[owner]
            for reservation_id in sorted(self._owned.pop(owner, set())):
                gone.append(await self._close_all(reservation_id, self._held[reservation_id]))
        return gone

    async def _close_all(self, reservation_id: str, held: _Held) -> Reservation:
        await self.close_reservation(reservation_id)
        return _reservation(reservation_id, held)

    async def publish_kv_event(self, event_json: str) -> str:
        """Append one event; returns its id."""
        event_id = self._next_id
        self._next_id += 1
        self._events.append((event_id, event_json))
        async with self._appended:
            self._appended.notify_all()
        return str(event_id)

    async def kv_events_since(self, last_id: str, block_ms: int,
                              count: int = 1000) -> tuple[list[str], str]:
        """Up to ``count`` events after ``last_id``, waiting up to ``block_ms`` ms."""
        after = _parse_id(last_id)
        if block_ms > 0 and self._next_id - 1 <= after:
            async with self._appended:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._appended.wait_for(
                        lambda: self._next_id - 1 > after), block_ms / 1000)
        picked = [(i, text) for i, text in self._events if i > after][:count]
        return [text for _, text in picked], str(picked[-1][0]) if picked else last_id


def _parse_id(last_id: str) -> int:
    try:
        return int(last_id)
    except ValueError:
        raise ValidationError("kv event log", [Issue("last_id", f"{last_id!r} is not an id "
                                                     "this log returned")]) from None
