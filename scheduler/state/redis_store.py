"""Redis-backed shared state for several scheduler replicas (the only Redis importer).

:class:`RedisStore` implements :class:`~scheduler.state.base.TransferStore`,
:class:`~scheduler.state.reservations.LoadStore` and
:class:`~scheduler.state.reservations.KvEventLog` with the same semantics as the memory
stores, so a replica that restarts (or a new one) sees what the others wrote.

Keys (all under ``prefix``, see docs/state.md):

* ``workers`` — sorted set, worker name → lease deadline (store clock);
* ``w:NAME`` — hash: registration JSON and its id (``rid``, a content hash), epoch, TTL,
  deadline, block count;
* ``epoch:NAME`` — the registration counter (kept, so epochs only ever grow);
* ``used:NAME`` — bitmap of *used* KV blocks (a fresh registration is an empty key);
* ``jobs:NAME`` — list of queued :class:`TransferJob` JSON (RPUSH / BLPOP);
* ``delayed`` — sorted set of quarantined releases by due time;
* ``t:PLAN`` — hash: record JSON and version; ``pending:NAME`` — plan ids in flight;
  ``deadlines`` — sorted set of pending plan ids by their plan's ``not_after``;
* ``load:NAME`` + ``loads`` — reserved load; ``rsv:ID``, ``rsv-due``, ``rsv-of:OWNER``,
  ``owners`` — reservations, their deadlines, their owners and the owners' leases;
  ``kv-events`` — the KV event stream;
* ``seq``, ``changes``, ``view-id``, ``changes-floor`` — the change log that listings
  follow (see :mod:`scheduler.state.redis_scripts` and :mod:`scheduler.state.redis_view`).

Leases: the deadline is written by the store's clock (default ``time.time``: the
replicas share wall time, never one process's monotonic clock) and checked against it;
:meth:`RedisStore.expire` sweeps. A Redis key TTL (``safety_ttl_s``, real time) is a
safety net that drops a dead worker's keys even when no replica sweeps.

Every check-then-change (allocate, claim, reserve, queue a job, sweep) is one Lua
script, so two replicas never hand out the same block or oversubscribe a worker.
Listings (``list_workers``, ``loads``) are one script each that returns only what
changed since this replica's last listing; every ``resync_s`` (real time) a listing
reads everything again, a safety net like the key TTL.
Redis down: each method raises :class:`StoreUnavailableError` within about
``2 × (connect_timeout_s + socket_timeout_s)`` (one retry on a fresh connection).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from scheduler.state.base import (
    BlockGrant,
    Clock,
    WorkerDrainingError,
    WorkerEntry,
    WorkerRegisteredAgainError,
)
from scheduler.state.redis_errors import translate as _translate
from scheduler.state.redis_reservations import RedisReservations
from scheduler.state.redis_scripts import SCRIPTS
from scheduler.state.redis_view import (
    Fetched,
    ListingView,
    Registrations,
    Row,
    SyncAnswer,
    registration_id,
)
from scheduler.state.reservations import (
    DEFAULT_EVENT_MAXLEN,
    LoadStore,
    StoreUnavailableError,
    WorkerLoad,
    check_amounts,
    wanted,
)
from scheduler.transfer.plan import (
    Lease,
    TransferJob,
    TransferPlan,
    TransferRecord,
    WorkerRegistration,
)
from topology.errors import (
    ConflictError,
    Issue,
    NotFoundError,
    UnschedulableError,
    ValidationError,
)

__all__ = ["RedisStore", "StoreUnavailableError"]

_T = TypeVar("_T")
#: Most jobs handed out by one long-poll answer.
_MAX_JOBS = 10_000
#: Marker pushed on a job list to wake a long-poll when its worker goes away.
_WAKE = ""
#: Changes the log keeps before a sweep trims older ones (a listing older than that
#: reads everything once): bounds the log as workers come and go under new names.
TRIM_LAG = 100_000


def _texts(reply: object) -> list[str]:
    """A list reply of a ``decode_responses`` client (redis-py types it as a union)."""
    return [str(item) for item in cast(list[Any], reply or [])]


def _not_live(name: str) -> NotFoundError:
    return NotFoundError("worker", name, "register it first (POST /v1/workers)")


def _side_refused(plan: TransferPlan, code: int) -> NotFoundError | ConflictError:
    """What ``start_transfer``'s answer ``-code`` says of a side of ``plan`` (tens: 2 not
    live, 3 registered again, 4 draining; units: 1 source, 2 destination)."""
    side = plan.src if code % 10 == 1 else plan.dst
    if code // 10 == 2:
        return _not_live(side.worker)
    if code // 10 == 3:
        return WorkerRegisteredAgainError(side.worker, side.epoch)
    return WorkerDrainingError(side.worker)


def _grant(name: str, reg: WorkerRegistration, row: Sequence[Any]) -> BlockGrant:
    """One worker of a ``take`` answer: [epoch, ttl, expires, free, rid, JSON, blocks,
    draining]."""
    epoch, ttl, expires, free, _, _, blocks, draining = row
    # checked when the worker registered; built without validating again (hot path)
    lease = Lease.model_construct(worker=name, epoch=int(epoch), ttl_s=float(ttl),
                                  expires_at=float(expires))
    entry = WorkerEntry.model_construct(registration=reg, lease=lease, free_blocks=int(free),
                                        draining=bool(draining))
    return BlockGrant(entry, tuple(int(b) for b in blocks))


class RedisStore(RedisReservations):
    """Workers, leases, free blocks, jobs, transfers, loads and KV events in Redis."""

    def __init__(self, url: str, *, prefix: str = "toposched:", clock: Clock = time.time,
                 connect_timeout_s: float = 0.5, socket_timeout_s: float = 1.0,
                 finished_ttl_s: float = 3600.0, safety_ttl_s: float = 60.0,
                 event_maxlen: int = DEFAULT_EVENT_MAXLEN, resync_s: float = 10.0) -> None:
        self._prefix = prefix
        self._clock = clock
        self._grace_s = connect_timeout_s + socket_timeout_s
        self._finished_ms = int(finished_ttl_s * 1000)
        self._safety_s = safety_ttl_s
        self._event_maxlen = event_maxlen
        options: dict[str, Any] = {"decode_responses": True,
                                   "socket_connect_timeout": connect_timeout_s,
                                   "retry": Retry(NoBackoff(), 1)}
        self._r = aioredis.Redis.from_url(url, socket_timeout=socket_timeout_s, **options)
        # Long-polls (BLPOP, XREAD BLOCK, pub/sub) outlive any socket timeout; each is
        # bounded by asyncio.wait_for instead.
        self._blocking = aioredis.Redis.from_url(url, socket_timeout=None, **options)
        # Scripts (every round trip of a route request) run on a pool without a socket
        # timeout, each call bounded as a whole in _run: with one, redis-py wraps every
        # send in asyncio.wait_for, a new task per command (~15 % of a route's CPU).
        self._scripts = aioredis.Redis.from_url(url, socket_timeout=None, **options)
        self._script_limit_s = 2 * self._grace_s  # the bound with one retry, as above
        self._lua = {name: self._scripts.register_script(src) for name, src in SCRIPTS.items()}
        self._blmpop = True  # until a server older than Redis 7 says otherwise
        #: Parsed registrations by id: a route request reads two workers' entries and
        #: a listing may read every one; validating them again cost more than Redis.
        self._regs = Registrations()
        #: The registration id last seen per worker (sent along so that Redis returns
        #: a registration's JSON only when it is not the one this replica parsed).
        self._rids: dict[str, str] = {}
        self._view = ListingView()
        self._resync_s = resync_s
        self._full_at = -float("inf")

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _worker_keys(self, name: str) -> list[str]:
        return [self._k("workers"), self._k("w", name), self._k("used", name),
                self._k("jobs", name)]

    def _log_keys(self) -> list[str]:
        """The change-log keys every listing-changing script takes first."""
        return [self._k("seq"), self._k("changes")]

    def _safety_ms(self, ttl_s: float) -> int:
        return int(max(self._safety_s, 3 * ttl_s) * 1000)

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        # On timeout redis-py drops the connection (it never reads a stale reply later).
        async with asyncio.timeout(self._script_limit_s):
            return await self._lua[script](keys=list(keys), args=list(args))

    async def _blocking_call(self, call: Awaitable[_T], wait_s: float) -> _T:
        return await asyncio.wait_for(call, wait_s + self._grace_s)

    @_translate
    async def aclose(self) -> None:
        """Close the connection pools."""
        await self._r.aclose()
        await self._scripts.aclose()
        await self._blocking.aclose()

    @_translate
    async def ping(self) -> bool:
        """Whether Redis answers (for readiness probes)."""
        return bool(await self._r.ping())

    # -- workers and leases -------------------------------------------------------

    @_translate
    async def register_worker(self, reg: WorkerRegistration, ttl_s: float) -> Lease:
        """Add or replace a worker; a new epoch, a fresh lease, every block free."""
        expires = self._clock() + ttl_s
        text = reg.model_dump_json()
        keys = self._worker_keys(reg.name)
        epoch = await self._run(
            "register", [*self._log_keys(), *keys[:2], self._k("epoch", reg.name), *keys[2:]],
            [reg.name, text, repr(ttl_s), repr(expires), reg.layout.num_blocks,
             self._safety_ms(ttl_s), registration_id(text)])
        return Lease(worker=reg.name, epoch=int(epoch), ttl_s=ttl_s, expires_at=expires)

    @_translate
    async def heartbeat(self, name: str) -> Lease:
        """Extend a live worker's lease by its TTL."""
        found = await self._run("heartbeat", [*self._log_keys(), *self._worker_keys(name)],
                                [name, repr(self._clock())])
        if found is None:
            raise _not_live(name)
        epoch, ttl, expires = found
        return Lease(worker=name, epoch=int(epoch), ttl_s=float(ttl), expires_at=float(expires))

    @_translate
    async def remove_worker(self, name: str) -> bool:
        """Forget a worker and its queued jobs; False when it was not registered."""
        return bool(await self._remove(name, ""))

    async def _remove(self, name: str, now: str) -> int:
        return int(await self._run("remove", [*self._log_keys(), *self._worker_keys(name)],
                                   [name, now]))

    @_translate
    async def get_worker(self, name: str) -> WorkerEntry:
        """A live worker by name."""
        return (await self._take({name: 0}, refuse_draining=False))[name].entry

    @_translate
    async def drain_worker(self, name: str) -> WorkerEntry:
        """Mark a live worker draining (one script; idempotent): no new transfer may use
        it. A field of its hash: heartbeats keep it, a new registration drops it."""
        marked = await self._run("drain", [*self._log_keys(), self._k("w", name)],
                                 [name, repr(self._clock())])
        if not marked:
            raise _not_live(name)
        return await self.get_worker(name)

    @_translate
    async def list_workers(self) -> list[WorkerEntry]:
        """Every live worker, by name."""
        await self._sync()
        return self._view.listing(self._clock())

    @_translate
    async def list_with_loads(self, loads: LoadStore
                              ) -> tuple[list[WorkerEntry], dict[str, WorkerLoad]]:
        """``list_workers()`` and ``loads.loads()``: one round trip when ``loads`` is this
        store."""
        if loads is not self:
            return await self.list_workers(), await loads.loads()
        await self._sync()
        return self._view.listing(self._clock()), self._view.loads_by_name()

    async def _sync(self) -> None:
        """Bring the listing view up to date: one script, answering what changed."""
        view, started = self._view, time.monotonic()
        full = started - self._full_at >= self._resync_s
        if full:
            self._full_at = started
        reply = await self._run(
            "sync", [*self._log_keys(), self._k("view-id"), self._k("changes-floor"),
                     self._k("workers"), self._k("loads")],
            [self._prefix, "" if full else view.view_id, view.seq, uuid.uuid4().hex])
        answer = SyncAnswer.parse(reply)
        missing = answer.unresolved(self._regs)
        fetched = await self._fetch_registrations(missing) if missing else {}
        view.apply(answer, lambda row: self._resolve(row, fetched))

    def _resolve(self, row: Row, fetched: Fetched) -> WorkerRegistration | None:
        """A row's registration: parsed before, or fetched for it (same rid, or the same
        epoch for a registration stored without rid)."""
        reg = self._regs.get(row.rid or "")
        if reg is None and row.name in fetched:
            rid, epoch, got = fetched[row.name]
            if (rid == row.rid) if row.rid else str(epoch) == row.epoch:
                reg = got
        if reg is not None and row.rid:
            self._rids[row.name] = row.rid
        return reg

    async def _fetch_registrations(self, names: Sequence[str]) -> Fetched:
        """The current registrations of ``names`` (parsed once per distinct JSON)."""
        reply = await self._run("registrations", [self._k("w", n) for n in names], [])
        out: Fetched = {}
        for i, name in enumerate(names):
            rid, epoch, text = reply[3 * i:3 * i + 3]
            if text is not None and epoch is not None:
                out[name] = (rid, int(epoch), self._regs.parse(text)[1])
        return out

    @_translate
    async def expire(self) -> list[str]:
        """Remove workers whose lease ran out and apply due delayed releases; return the
        names of the removed workers (each reported by exactly one replica)."""
        now = repr(self._clock())
        due = _texts(await self._r.zrangebyscore(self._k("workers"), "-inf", now))
        gone = [name for name in sorted(due) if await self._remove(name, now)]
        for member in _texts(await self._r.zrangebyscore(self._k("delayed"), "-inf", now)):
            name = json.loads(member)[0]
            await self._run("take_delayed", [*self._log_keys(), self._k("delayed"),
                                             self._k("w", name), self._k("used", name)],
                            [member])
        await self._run("trim", [*self._log_keys(), self._k("changes-floor")], [TRIM_LAG])
        return gone

    # -- KV blocks ----------------------------------------------------------------

    @_translate
    async def allocate_blocks(self, name: str, count: int) -> list[int]:
        """Take ``count`` free blocks of a worker (lowest ids first), atomically."""
        return list((await self._take({name: count}))[name].blocks)

    @_translate
    async def take_blocks(self, counts: Mapping[str, int]) -> dict[str, BlockGrant]:
        """Every named worker's entry, taking ``counts[name]`` free blocks of each in one
        script, all or nothing."""
        return await self._take(counts)

    async def _take(self, counts: Mapping[str, int], *,
                    refuse_draining: bool = True) -> dict[str, BlockGrant]:
        names = list(counts)
        # Registrations this replica holds, by the id it tells Redis it has: Redis
        # sends the JSON only for another id, so these cover every answer without it.
        known = {n: held for n in names if (held := self._held(n)) is not None}
        keys = [key for n in names for key in (self._k("w", n), self._k("used", n))]
        args = [arg for n in names for arg in (n, counts[n], known[n][0] if n in known else "")]
        reply = await self._run("take", [*self._log_keys(), *keys],
                                [repr(self._clock()), *args, "1" if refuse_draining else ""])
        if reply[0] == -1:
            raise _not_live(names[reply[1] - 1])
        if reply[0] == -3:
            raise WorkerDrainingError(names[reply[1] - 1])
        if reply[0] == -2:
            name = names[reply[1] - 1]
            raise UnschedulableError([f"{name} has {reply[2]} free KV blocks, "
                                      f"{counts[name]} needed"])
        grants = {}
        for name, row in zip(names, reply[1:], strict=True):
            rid, text = row[4], row[5]
            reg = self._regs.parse(text)[1] if text else known[name][1]
            self._rids[name] = rid
            grants[name] = _grant(name, reg, row)
        return grants

    def _held(self, name: str) -> tuple[str, WorkerRegistration] | None:
        """The id and registration of ``name`` last seen, if still parsed here."""
        rid = self._rids.get(name, "")
        reg = self._regs.get(rid)
        return (rid, reg) if reg is not None else None

    @_translate
    async def claim_blocks(self, name: str, blocks: Sequence[int]) -> None:
        """Mark given blocks of a worker as used (explicit destination blocks)."""
        if await self._set_blocks(name, blocks, 1, repr(self._clock()), None) < 0:
            raise _not_live(name)

    @_translate
    async def release_blocks(self, name: str, blocks: Sequence[int],
                             epoch: int | None = None) -> bool:
        """Return blocks to a worker's free list (of registration ``epoch`` if given)."""
        return await self._set_blocks(name, blocks, 0, "", epoch) == 0

    async def _set_blocks(self, name: str, blocks: Sequence[int], bit: int, now: str,
                          epoch: int | None) -> int:
        keys = [*self._log_keys(), self._k("w", name), self._k("used", name)]
        return int(await self._run("set_blocks", keys, [
            name, now, bit, "" if epoch is None else str(epoch), *map(int, blocks)]))

    @_translate
    async def release_blocks_at(self, name: str, blocks: Sequence[int], when: float,
                                epoch: int | None = None) -> None:
        """Return blocks to the free list once the clock reaches ``when`` (quarantine)."""
        member = json.dumps([name, [int(b) for b in blocks], uuid.uuid4().hex, epoch])
        await self._r.zadd(self._k("delayed"), {member: when})

    # -- jobs ---------------------------------------------------------------------

    @_translate
    async def put_job(self, name: str, job: TransferJob) -> None:
        """Queue a job for a worker's sidecar and wake its long-poll."""
        queued = await self._run("put_job", [self._k("w", name), self._k("jobs", name)],
                                 [repr(self._clock()), job.model_dump_json()])
        if not queued:
            raise _not_live(name)

    @_translate
    async def wait_jobs(self, name: str, timeout_s: float) -> list[TransferJob]:
        """Queued jobs of a worker, waiting up to ``timeout_s`` for the first one."""
        return [TransferJob.model_validate_json(text)
                for text in await self.wait_job_texts(name, timeout_s)]

    @_translate
    async def wait_job_texts(self, name: str, timeout_s: float) -> list[str]:
        """As :meth:`wait_jobs`, the jobs as the JSON text they were queued as."""
        if await self._run("live", [self._k("w", name)], [repr(self._clock())]) is None:
            raise _not_live(name)
        key = self._k("jobs", name)
        texts = _texts(await self._r.lpop(key, _MAX_JOBS))
        if not [t for t in texts if t != _WAKE] and timeout_s > 0:
            texts = await self._blocking_call(self._pop_waiting(key, timeout_s), timeout_s)
        return [t for t in texts if t != _WAKE]

    async def _pop_waiting(self, key: str, timeout_s: float) -> list[str]:
        """Wait for the first job. BLMPOP (Redis ≥ 7) returns every queued job in the
        wake-up round trip; older servers take BLPOP and then LPOP the rest."""
        if self._blmpop:
            try:
                got = await self._blocking.blmpop(timeout_s, 1, key, direction="LEFT",
                                                  count=_MAX_JOBS)
                return _texts(cast(list[Any], got)[1]) if got else []
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._blmpop = False
        first = _texts(await self._blocking.blpop([key], timeout_s))
        return [first[1], *_texts(await self._r.lpop(key, _MAX_JOBS))] if first else []

    # -- transfers ----------------------------------------------------------------

    @_translate
    async def start_transfer(self, record: TransferRecord,
                             jobs: Sequence[tuple[str, TransferJob]]) -> None:
        """Store a new pending record and queue its jobs in one script, all or nothing."""
        plan = record.plan
        keys = [self._k("t", plan.plan_id), self._k("pending", plan.src.worker),
                self._k("pending", plan.dst.worker), self._k("deadlines"),
                self._k("w", plan.src.worker), self._k("w", plan.dst.worker)]
        keys += [key for name, _ in jobs for key in (self._k("w", name), self._k("jobs", name))]
        done = int(await self._run("start_transfer", keys, [
            repr(self._clock()), plan.plan_id, uuid.uuid4().hex, record.model_dump_json(),
            repr(plan.not_after), str(plan.src.epoch), str(plan.dst.epoch),
            *(job.model_dump_json() for _, job in jobs)]))
        if done == -1:
            raise ConflictError(f"transfer {plan.plan_id!r} already exists")
        if done < -1:
            raise _side_refused(plan, -done)
        if done > 0:
            raise _not_live(jobs[done - 1][0])

    @_translate
    async def put_transfer(self, record: TransferRecord) -> None:
        """Store (insert or replace) a transfer record; finished ones expire later."""
        plan = record.plan
        key = self._k("t", plan.plan_id)
        sides = [self._k("pending", plan.src.worker), self._k("pending", plan.dst.worker)]
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, "record", record.model_dump_json())
        pipe.hincrby(key, "version", 1)
        for side in sides:
            if record.state == "pending":
                pipe.sadd(side, plan.plan_id)
            else:
                pipe.srem(side, plan.plan_id)
        if record.state == "pending":
            pipe.zadd(self._k("deadlines"), {plan.plan_id: plan.not_after})
            pipe.persist(key)
        else:
            pipe.zrem(self._k("deadlines"), plan.plan_id)
            pipe.pexpire(key, self._finished_ms)
        pipe.publish(self._k("tchan", plan.plan_id), "1")
        await pipe.execute()

    @_translate
    async def read_transfer(self, plan_id: str) -> tuple[TransferRecord, int]:
        """A transfer record and its version."""
        return await self._read_transfer(plan_id)

    @_translate
    async def replace_transfer(self, record: TransferRecord, version: int) -> int | None:
        """Store ``record`` if its version is still ``version`` (one script); the new
        version."""
        plan = record.plan
        keys = [self._k("t", plan.plan_id), self._k("pending", plan.src.worker),
                self._k("pending", plan.dst.worker), self._k("deadlines")]
        done = int(await self._run("replace_transfer", keys, [
            version, record.model_dump_json(), record.state, plan.plan_id,
            repr(plan.not_after), self._finished_ms, self._k("tchan", plan.plan_id)]))
        if done < 0:
            raise NotFoundError("transfer", plan.plan_id)
        return done or None

    @_translate
    async def due_transfers(self, now: float, limit: int = 1000) -> list[str]:
        """Pending transfers whose ``not_after`` is ``now`` or earlier (one ZRANGEBYSCORE)."""
        return _texts(await self._r.zrangebyscore(self._k("deadlines"), "-inf", repr(now),
                                                  start=0, num=limit))

    async def _read_transfer(self, plan_id: str) -> tuple[TransferRecord, int]:
        text, version = cast(list[str | None],
                             await self._r.hmget(self._k("t", plan_id), ["record", "version"]))
        if text is None:
            raise NotFoundError("transfer", plan_id)
        return TransferRecord.model_validate_json(text), int(version or 0)

    @_translate
    async def get_transfer(self, plan_id: str) -> TransferRecord:
        """A transfer record by plan id."""
        return (await self._read_transfer(plan_id))[0]

    @_translate
    async def wait_transfer(self, plan_id: str, timeout_s: float,
                            version: int) -> tuple[TransferRecord, int]:
        """The record once its version exceeds ``version``, or as is after ``timeout_s``."""
        found = await self._read_transfer(plan_id)
        if timeout_s <= 0 or found[1] > version:
            return found
        return await self._blocking_call(self._watch(plan_id, timeout_s, version), timeout_s)

    async def _watch(self, plan_id: str, timeout_s: float,
                     version: int) -> tuple[TransferRecord, int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._blocking.pubsub() as pubsub:
            await pubsub.subscribe(self._k("tchan", plan_id))
            # Read after subscribing: a store between the first read and here is not lost.
            found = await self._read_transfer(plan_id)
            while found[1] <= version and (left := deadline - loop.time()) > 0:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                found = await self._read_transfer(plan_id)
            return found

    @_translate
    async def transfers_of(self, name: str) -> list[TransferRecord]:
        """Pending transfers that have ``name`` on either side (oldest first)."""
        ids = sorted(_texts(list(await self._r.smembers(self._k("pending", name)))))
        pipe = self._r.pipeline(transaction=False)
        for plan_id in ids:
            pipe.hget(self._k("t", plan_id), "record")
        records = [TransferRecord.model_validate_json(t) for t in await pipe.execute() if t]
        pending = [r for r in records if r.state == "pending"]
        return sorted(pending, key=lambda r: (r.created_at, r.plan.plan_id))

    # -- load reservations --------------------------------------------------------

    @_translate
    async def set_capacity(self, worker: str, max_tokens: int, max_requests: int) -> None:
        """Declare (or change) a worker's capacity; its current load is kept."""
        check_amounts(max_tokens, max_requests)
        await self._run("set_capacity", [*self._log_keys(), self._k("load", worker),
                                         self._k("loads")], [worker, max_tokens, max_requests])

    @_translate
    async def reserve(self, worker: str, tokens: int, requests: int = 1) -> bool:
        """Add the load if it fits the worker's capacity; False (and nothing added) if not."""
        return await self._reserve([(worker, tokens, requests)]) is None

    @_translate
    async def reserve_all(self, items: Sequence[tuple[str, int, int]]) -> str | None:
        """Reserve every item or none, in one script; None when reserved, else the first
        worker that is full."""
        return await self._reserve(items)

    async def _reserve(self, items: Sequence[tuple[str, int, int]]) -> str | None:
        if not wanted(items):  # checks the amounts too
            return None
        keys = [self._k("load", worker) for worker, _, _ in items]
        args = [arg for item in items for arg in item]
        done, index = await self._run("reserve", [*self._log_keys(), *keys], args)
        if done < 0:
            raise NotFoundError("worker", items[index - 1][0], "set its capacity first")
        return None if done == 1 else items[index - 1][0]

    @_translate
    async def release(self, worker: str, tokens: int, requests: int = 1) -> None:
        """Take load back (never below zero); unknown workers are ignored."""
        check_amounts(tokens, requests)
        await self._run("release_load", [*self._log_keys(), self._k("load", worker)],
                        [worker, tokens, requests])

    @_translate
    async def loads(self) -> dict[str, WorkerLoad]:
        """Every worker with a capacity, by name."""
        await self._sync()
        return self._view.loads_by_name()

    @_translate
    async def drop_load(self, worker: str) -> bool:
        """Forget a worker's capacity and load; False when it had none."""
        return bool(await self._run("drop_load", [*self._log_keys(), self._k("load", worker),
                                                  self._k("loads")], [worker]))

    # -- KV events ----------------------------------------------------------------

    @_translate
    async def publish_kv_event(self, event_json: str) -> str:
        """Append one event to the capped stream; returns its stream id."""
        return cast(str, await self._r.xadd(self._k("kv-events"), {"e": event_json},
                                            maxlen=self._event_maxlen, approximate=True))

    @_translate
    async def kv_events_since(self, last_id: str, block_ms: int,
                              count: int = 1000) -> tuple[list[str], str]:
        """Up to ``count`` events after ``last_id``, waiting up to ``block_ms`` ms."""
        streams: dict[Any, Any] = {self._k("kv-events"): last_id}
        reply: Any
        try:
            if block_ms > 0:
                reply = await self._blocking_call(
                    self._blocking.xread(streams, count=count, block=block_ms),
                    block_ms / 1000)
            else:
                reply = await self._r.xread(streams, count=count)
        except ResponseError as exc:
            raise ValidationError("kv event log", [Issue(
                "last_id", f"{last_id!r} is not an id this log returned")]) from exc
        entries = cast(list[tuple[str, dict[str, str]]], reply[0][1] if reply else [])
        return [fields["e"] for _, fields in entries], entries[-1][0] if entries else last_id
