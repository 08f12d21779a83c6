"""Load reservations in Redis: the part of :class:`~scheduler.state.redis_store.RedisStore`
that opens, closes, renews, reads and expires them (docs/state.md, "Load reservations").

A mixin: the store provides the key prefix, the clock, the connection and the script
runner (:class:`_Store`). The scripts are in :mod:`scheduler.state.redis_scripts`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, cast

from scheduler.state.base import Clock
from scheduler.state.redis_errors import translate as _translate
from scheduler.state.reservations import LoadItem, Reservation, wanted
from topology.errors import NotFoundError

#: Most due reservations one sweep closes.
_MAX_DUE = 10_000


class _Store(Protocol):
    """What the mixin uses of the store."""

    _prefix: str
    _clock: Clock
    _r: Any

    def _k(self, *parts: str) -> str: ...

    def _log_keys(self) -> list[str]: ...

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...


def _texts(reply: object) -> list[str]:
    return [str(item) for item in cast(list[Any], reply or [])]


def _not_open(reservation_id: str) -> NotFoundError:
    return NotFoundError("reservation", reservation_id,
                         "it was closed or expired (its load is given back)")


def _items(text: str) -> tuple[LoadItem, ...]:
    rows = json.loads(text)  # Lua's cjson writes an empty list as {}
    # items written before promised blocks (context) existed have three (four) fields
    return tuple(LoadItem(worker=row[0], tokens=int(row[1]), requests=int(row[2]),
                          blocks=int(row[3]) if len(row) > 3 else 0,
                          context=int(row[4]) if len(row) > 4 else 0)
                 for row in (rows if isinstance(rows, list) else []))


def _reservation(reservation_id: str, owner: str, items: str, expires: float) -> Reservation:
    return Reservation(id=reservation_id, owner=owner, items=_items(items), expires_at=expires)


def _closed(reply: Sequence[Any]) -> Reservation:
    """A closed reservation from a script's ``{id, owner, expires, released items}``."""
    return _reservation(str(reply[0]), str(reply[1]), str(reply[3]), float(reply[2]))



class RedisReservations:
    """:class:`~scheduler.state.reservations.LoadStore`'s reservation methods on Redis."""

    @_translate
    async def open_reservation(self: _Store, reservation_id: str, owner: str,
                               items: Sequence[LoadItem], ttl_s: float) -> str | None:
        """Reserve ``items`` under ``reservation_id`` for ``owner``, in one script."""
        rows = [(i.worker, i.tokens, i.requests, i.blocks, i.context) for i in items]
        wanted([row[:3] for row in rows])  # checks the amounts (the others: by LoadItem)
        keys = [*self._log_keys(), self._k("rsv", reservation_id), self._k("rsv-due"),
                self._k("rsv-of", owner), *(self._k("load", row[0]) for row in rows)]
        args = [reservation_id, owner, json.dumps(rows), repr(self._clock() + ttl_s),
                *(arg for row in rows for arg in row)]
        done, index = await self._run("open_reservation", keys, args)
        if done < 0:
            raise NotFoundError("worker", rows[index - 1][0], "set its capacity first")
        return None if done == 1 else rows[index - 1][0]

    @_translate
    async def close_reservation(self: _Store, reservation_id: str,
                                workers: Sequence[str] | None = None, *,
                                landed: bool = False, report: bool = True) -> list[LoadItem]:
        """Give back the reservation's items on ``workers`` (None: all), in one script;
        ``landed``: the promised blocks of the others too; ``report``: return them."""
        only = "" if workers is None else json.dumps(list(workers))
        reply = await self._run("close_reservation",
                                [*self._log_keys(), self._k("rsv", reservation_id)],
                                [self._prefix, reservation_id, "", only,
                                 "1" if landed else ""])
        return list(_closed(reply).items) if reply and report else []

    @_translate
    async def renew_reservation(self: _Store, reservation_id: str, ttl_s: float) -> Reservation:
        """Move an open reservation's end to ``ttl_s`` from now."""
        expires = self._clock() + ttl_s
        reply = await self._run("renew_reservation", [self._k("rsv", reservation_id),
                                                      self._k("rsv-due")],
                                [reservation_id, repr(expires)])
        if not reply:
            raise _not_open(reservation_id)
        return _reservation(reservation_id, reply[0], reply[1], expires)

    @_translate
    async def get_reservation(self: _Store, reservation_id: str) -> Reservation:
        """An open reservation."""
        owner, items, expires = cast(list[str | None], await self._r.hmget(
            self._k("rsv", reservation_id), ["owner", "items", "expires"]))
        if owner is None or items is None or expires is None:
            raise _not_open(reservation_id)
        return _reservation(reservation_id, owner, items, float(expires))

    @_translate
    async def renew_owner(self: _Store, owner: str, ttl_s: float) -> None:
        """Extend ``owner``'s lease by ``ttl_s``."""
        await self._r.zadd(self._k("owners"), {owner: self._clock() + ttl_s})

    @_translate
    async def expire_reservations(self: _Store) -> list[Reservation]:
        """Close reservations past their end or of owners whose lease lapsed (one script
        each, re-checking the deadline: each is reported by exactly one replica)."""
        now = repr(self._clock())
        gone = []
        for reservation_id in _texts(await self._r.zrangebyscore(
                self._k("rsv-due"), "-inf", now, start=0, num=_MAX_DUE)):
            reply = await self._run("close_reservation", [
                *self._log_keys(), self._k("rsv", reservation_id)],
                [self._prefix, reservation_id, now, "", ""])
            if reply:
                gone.append(_closed(reply))
        for owner in _texts(await self._r.zrangebyscore(self._k("owners"), "-inf", now)):
            reply = await self._run("close_owner", [*self._log_keys(), self._k("owners"),
                                                    self._k("rsv-of", owner)],
                                    [self._prefix, owner, now])
            gone += [_closed(reply[i:i + 4]) for i in range(0, len(reply), 4)]
        return gone
