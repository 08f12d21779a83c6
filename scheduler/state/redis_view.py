"""A replica's copy of every worker's entry and load, kept current from Redis's change log.

The route path lists every worker and every load per request. Reading and parsing all
of them from Redis each time cost ~10 ms of client CPU at 256 workers, while a request
changes only the two workers it picks. :class:`ListingView` keeps the last entries and
loads; each :mod:`~scheduler.state.redis_scripts` ``SYNC`` answer carries only the
workers changed since the view's ``seq`` (or everything, see the script), and unchanged
workers keep their objects, so the snapshot code downstream can compare by identity.

Plain Python: the store does the I/O, this module only applies answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scheduler.state.base import WorkerEntry
from scheduler.state.redis_scripts import SYNC_FIELDS
from scheduler.state.reservations import WorkerLoad
from scheduler.transfer.plan import Lease, WorkerRegistration

#: Parsed registrations kept at most (one per distinct registration).
MAX_CACHED_REGS = 65_536
_WIDTH = len(SYNC_FIELDS)


def registration_id(text: str) -> str:
    """The id of a registration's JSON text: equal texts, equal ids (content hash)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Registrations:
    """Parsed registrations by id: parsing (validating) one costs more than a round trip."""

    def __init__(self) -> None:
        self._by_id: dict[str, WorkerRegistration] = {}

    def get(self, rid: str) -> WorkerRegistration | None:
        """The registration with id ``rid``, if parsed before."""
        return self._by_id.get(rid) if rid else None

    def parse(self, text: str) -> tuple[str, WorkerRegistration]:
        """The id and the registration of ``text`` (parsed once per distinct text)."""
        rid = registration_id(text)
        reg = self._by_id.get(rid)
        if reg is None:
            if len(self._by_id) >= MAX_CACHED_REGS:  # workers come and go: start over
                self._by_id.clear()
            reg = WorkerRegistration.model_validate_json(text)
            self._by_id[rid] = reg
        return rid, reg


@dataclass(frozen=True, slots=True)
class Row:
    """One worker in a ``SYNC`` answer (None where Redis has no such hash or field)."""

    name: str
    rid: str | None
    epoch: str | None
    ttl: str | None
    expires: str | None
    nblocks: str | None
    used: int | None
    tokens: str | None
    requests: str | None
    max_tokens: str | None
    max_requests: str | None
    blocks: str | None = None
    draining: str | None = None
    context: str | None = None


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    """A parsed ``SYNC`` answer."""

    view_id: str
    seq: int
    full: bool
    rows: tuple[Row, ...]

    @classmethod
    def parse(cls, reply: Sequence[Any]) -> SyncAnswer:
        """From the script's flat reply."""
        flat = reply[3:]
        rows = tuple(Row(*flat[i:i + _WIDTH]) for i in range(0, len(flat), _WIDTH))
        return cls(str(reply[0]), int(reply[1]), bool(int(reply[2])), rows)

    def unresolved(self, regs: Registrations) -> list[str]:
        """Live workers whose registration is not parsed yet (fetch these first)."""
        return [r.name for r in self.rows if r.epoch is not None and regs.get(r.rid or "") is None]


#: What a fetch of registrations returns per worker name: its rid, epoch and the
#: parsed registration (the worker may have re-registered since the answer).
Fetched = dict[str, tuple[str, int, WorkerRegistration]]


def _load(row: Row, old: WorkerLoad | None) -> WorkerLoad | None:
    if row.tokens is None or row.max_tokens is None:
        return None
    values = (int(row.tokens), int(row.requests or 0), int(row.max_tokens),
              int(row.max_requests or 0), int(row.blocks or 0), int(row.context or 0))
    if old is not None and (old.tokens, old.requests, old.max_tokens,
                            old.max_requests, old.blocks, old.context) == values:
        return old  # unchanged: keep the object (snapshots compare by identity)
    # written by the store itself: constructed without validating again (hot path)
    return WorkerLoad.model_construct(tokens=values[0], requests=values[1],
                                      max_tokens=values[2], max_requests=values[3],
                                      blocks=values[4], context=values[5])


def _entry(name: str, reg: WorkerRegistration, row: Row,
           old: WorkerEntry | None) -> WorkerEntry:
    """The row as an entry, reusing ``old`` (or its lease) where nothing changed."""
    lease_key = (int(row.epoch or 0), float(row.ttl or 0), float(row.expires or 0))
    free = int(row.nblocks or 0) - int(row.used or 0)
    same_lease = old is not None and (old.lease.epoch, old.lease.ttl_s,
                                      old.lease.expires_at) == lease_key
    draining = row.draining is not None
    if old is not None and same_lease:
        if old.registration is reg and old.free_blocks == free and old.draining == draining:
            return old
        lease = old.lease
    else:
        lease = Lease.model_construct(worker=name, epoch=lease_key[0], ttl_s=lease_key[1],
                                      expires_at=lease_key[2])
    # checked when the worker registered; built without validating again
    return WorkerEntry.model_construct(registration=reg, lease=lease, free_blocks=free,
                                       draining=draining)


class ListingView:
    """Every worker's entry and load as of ``seq`` of the view ``view_id``."""

    def __init__(self) -> None:
        self.view_id = ""
        self.seq = 0
        self.entries: dict[str, WorkerEntry] = {}
        self.loads: dict[str, WorkerLoad] = {}
        #: The live listing by name (None: rebuild), valid until its first lease ends;
        #: a changed entry of the same registration epoch is patched into its slot.
        self._listing: list[WorkerEntry] | None = None
        self._slots: dict[str, int] = {}
        self._until = 0.0
        self._loads_sorted = True

    def apply(self, answer: SyncAnswer,
              registration: Callable[[Row], WorkerRegistration | None]) -> None:
        """Take in an answer; ``registration`` resolves a row's registration (None: not
        known yet, the worker keeps its previous entry; it re-registered after the
        answer, so the next answer carries it again)."""
        if answer.view_id == self.view_id and answer.seq < self.seq:
            return  # overtaken by a newer answer already applied
        if not answer.full and answer.view_id != self.view_id:
            return  # changes since a point of a view this one has replaced
        entries, loads = self.entries, self.loads
        if answer.full:
            self.entries, self.loads, self._listing = {}, {}, None
            self._loads_sorted = False
        for row in answer.rows:
            self._apply_row(row, entries.get(row.name), loads.get(row.name), registration)
        self.view_id, self.seq = answer.view_id, answer.seq

    def _apply_row(self, row: Row, old: WorkerEntry | None, old_load: WorkerLoad | None,
                   registration: Callable[[Row], WorkerRegistration | None]) -> None:
        name = row.name
        load = _load(row, old_load)
        if load is None:
            self.loads.pop(name, None)
        else:
            self._loads_sorted &= name in self.loads
            self.loads[name] = load
        if row.epoch is None:
            self._drop(name)
            return
        reg = registration(row)
        if reg is None:  # keep what was known (a full answer started a new dict)
            if old is not None and name not in self.entries:
                self.entries[name], self._listing = old, None
            return
        entry = _entry(name, reg, row, old)
        if entry is not self.entries.get(name):
            self._put(name, entry)

    def _drop(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self._listing = None

    def _put(self, name: str, entry: WorkerEntry) -> None:
        old = self.entries.get(name)
        self.entries[name] = entry
        slot = self._slots.get(name)
        if (self._listing is None or old is None or slot is None
                or old.lease.epoch != entry.lease.epoch):
            self._listing = None
            return
        self._listing[slot] = entry
        self._until = min(self._until, entry.lease.expires_at)

    def listing(self, now: float) -> list[WorkerEntry]:
        """Every live worker (lease beyond ``now``), by name."""
        if self._listing is None or now >= self._until:
            live = [e for _, e in sorted(self.entries.items()) if e.lease.expires_at > now]
            self._listing = live
            self._slots = {e.registration.name: i for i, e in enumerate(live)}
            self._until = min((e.lease.expires_at for e in live), default=float("inf"))
        return list(self._listing)

    def loads_by_name(self) -> dict[str, WorkerLoad]:
        """Every worker with a capacity, by name (a copy)."""
        if not self._loads_sorted:
            self.loads = dict(sorted(self.loads.items()))
            self._loads_sorted = True
        return dict(self.loads)
