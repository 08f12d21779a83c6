"""Redis-backed shared state for several scheduler replicas (the only Redis importer).

:class:`RedisStore` implements :class:`~scheduler.state.base.TransferStore`,
:class:`~scheduler.state.reservations.LoadStore` and
:class:`~scheduler.state.reservations.KvEventLog` with the same semantics as the memory
stores, so a replica that restarts (or a new one) sees what the others wrote.

Keys (all under ``prefix``, see docs/state.md):

* ``workers`` — sorted set, worker name → lease deadline (store clock);
* ``w:NAME`` — hash: registration JSON, epoch, TTL, deadline, block count;
* ``epoch:NAME`` — the registration counter (kept, so epochs only ever grow);
* ``used:NAME`` — bitmap of *used* KV blocks (a fresh registration is an empty key);
* ``jobs:NAME`` — list of queued :class:`TransferJob` JSON (RPUSH / BLPOP);
* ``delayed`` — sorted set of quarantined releases by due time;
* ``t:PLAN`` — hash: record JSON and version; ``pending:NAME`` — plan ids in flight;
* ``load:NAME`` + ``loads`` — reservations; ``kv-events`` — the KV event stream.

Leases: the deadline is written by the store's clock (default ``time.time``: the
replicas share wall time, never one process's monotonic clock) and checked against it;
:meth:`RedisStore.expire` sweeps. A Redis key TTL (``safety_ttl_s``, real time) is a
safety net that drops a dead worker's keys even when no replica sweeps.

Every check-then-change (allocate, claim, reserve, queue a job, sweep) is one Lua
script, so two replicas never hand out the same block or oversubscribe a worker.
Redis down: each method raises :class:`StoreUnavailableError` within about
``2 × (connect_timeout_s + socket_timeout_s)`` (one retry on a fresh connection).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scheduler.state.base import Clock, WorkerEntry
from scheduler.state.reservations import (
    DEFAULT_EVENT_MAXLEN,
    StoreUnavailableError,
    WorkerLoad,
    check_amounts,
)
from scheduler.transfer.plan import Lease, TransferJob, TransferRecord, WorkerRegistration
from topology.errors import Issue, NotFoundError, UnschedulableError, ValidationError

__all__ = ["RedisStore", "StoreUnavailableError"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
#: Most jobs handed out by one long-poll answer.
_MAX_JOBS = 10_000
#: Marker pushed on a job list to wake a long-poll when its worker goes away.
_WAKE = ""

_REGISTER = """
local epoch = redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[2], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[2], 'reg', ARGV[2], 'epoch', epoch, 'ttl', ARGV[3],
           'expires', ARGV[4], 'nblocks', ARGV[5], 'safety', ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return epoch
"""

# The safety-net TTL (ms) of a worker's keys is kept in its hash ('safety').

# KEYS: workers, w, used, jobs. ARGV: name, now.
_HEARTBEAT = """
local h = redis.call('HMGET', KEYS[2], 'expires', 'ttl', 'epoch', 'safety')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[2]) then return false end
local expires = string.format('%.17g', tonumber(ARGV[2]) + tonumber(h[2]))
redis.call('HSET', KEYS[2], 'expires', expires)
redis.call('ZADD', KEYS[1], expires, ARGV[1])
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], h[4]) end
return {h[3], h[2], expires}
"""

# Workers' hashes and used-block counts in one call, as one JSON text: a pipeline of
# two commands per worker cost ~5 ms of client CPU per listing of 256 workers, most of
# it redis-py parsing ~1,500 reply elements. KEYS: w:NAME, used:NAME per worker.
_ENTRIES = """
local out = {}
for i = 1, #KEYS, 2 do
  local h = redis.call('HMGET', KEYS[i], 'reg', 'epoch', 'ttl', 'expires', 'nblocks')
  if h[1] then
    out[#out + 1] = {h[1], h[2], h[3], h[4], h[5], redis.call('BITCOUNT', KEYS[i + 1])}
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""

_LIVE = """
local h = redis.call('HMGET', KEYS[1], 'expires', 'nblocks')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[1]) then return nil end
return tonumber(h[2])
"""

# KEYS: w, used. ARGV: now, count. {-1}: not live; {-2, free}: too few.
_ALLOCATE = """
local h = redis.call('HMGET', KEYS[1], 'expires', 'nblocks', 'safety')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[1]) then return {-1} end
local count = tonumber(ARGV[2])
local free = tonumber(h[2]) - redis.call('BITCOUNT', KEYS[2])
if count > free then return {-2, free} end
local out = {0}
local byte = 0
for _ = 1, count do
  local pos = redis.call('BITPOS', KEYS[2], 0, byte)
  if pos < 0 then pos = redis.call('STRLEN', KEYS[2]) * 8 end
  redis.call('SETBIT', KEYS[2], pos, 1)
  out[#out + 1] = pos
  byte = math.floor(pos / 8)
end
redis.call('PEXPIRE', KEYS[2], h[3])
return out
"""

# KEYS: w, used. ARGV: now (or '' to skip the lease check), bit, blocks...
_SET_BLOCKS = """
local h = redis.call('HMGET', KEYS[1], 'expires', 'nblocks', 'safety')
if not h[1] then return -1 end
if ARGV[1] ~= '' and tonumber(h[1]) <= tonumber(ARGV[1]) then return -1 end
local n = tonumber(h[2])
for i = 3, #ARGV do
  local b = tonumber(ARGV[i])
  if b >= 0 and b < n then redis.call('SETBIT', KEYS[2], b, tonumber(ARGV[2])) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], h[3]) end
return 0
"""

# KEYS: w, jobs. ARGV: now, job.
_PUT_JOB = """
local h = redis.call('HMGET', KEYS[1], 'expires', 'safety')
if not h[1] or tonumber(h[1]) <= tonumber(ARGV[1]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], h[2])
return 1
"""

# KEYS: workers, w, used, jobs. ARGV: name, now ('' removes unconditionally).
_REMOVE = """
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score or tonumber(score) > tonumber(ARGV[2]) then return 0 end
end
local gone = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[3], KEYS[4])
redis.call('RPUSH', KEYS[4], '')
redis.call('PEXPIRE', KEYS[4], 10000)
if gone > 0 then return 1 end
return 0
"""

# KEYS: delayed, w, used. ARGV: member (JSON [name, blocks, nonce]).
_TAKE_DELAYED = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local n = tonumber(redis.call('HGET', KEYS[2], 'nblocks'))
if not n then return 0 end
for _, b in ipairs(cjson.decode(ARGV[1])[2]) do
  if b >= 0 and b < n then redis.call('SETBIT', KEYS[3], b, 0) end
end
return 1
"""

# KEYS: load. ARGV: tokens, requests. -1 unknown, 0 full, 1 reserved.
_RESERVE = """
local h = redis.call('HMGET', KEYS[1], 'tokens', 'requests', 'max_tokens', 'max_requests')
if not h[3] then return -1 end
local t, r = tonumber(ARGV[1]), tonumber(ARGV[2])
if tonumber(h[1]) + t > tonumber(h[3]) or tonumber(h[2]) + r > tonumber(h[4]) then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'tokens', t)
redis.call('HINCRBY', KEYS[1], 'requests', r)
return 1
"""

_RELEASE_LOAD = """
local h = redis.call('HMGET', KEYS[1], 'tokens', 'requests')
if not h[1] then return 0 end
redis.call('HSET', KEYS[1], 'tokens', math.max(0, tonumber(h[1]) - tonumber(ARGV[1])),
           'requests', math.max(0, tonumber(h[2]) - tonumber(ARGV[2])))
return 1
"""


def _translate(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Turn a lost or slow Redis into :class:`StoreUnavailableError` (foreign → domain)."""
    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise StoreUnavailableError(fn.__name__, str(exc) or type(exc).__name__) from exc
    return wrapper


def _load(fields: dict[str, str]) -> WorkerLoad:
    """A load hash the store wrote itself: constructed without re-validation (hot path)."""
    return WorkerLoad.model_construct(
        tokens=int(fields["tokens"]), requests=int(fields["requests"]),
        max_tokens=int(fields["max_tokens"]), max_requests=int(fields["max_requests"]))


def _texts(reply: object) -> list[str]:
    """A list reply of a ``decode_responses`` client (redis-py types it as a union)."""
    return [str(item) for item in cast(list[Any], reply or [])]


#: Parsed registrations kept at most (one per distinct registration).
_MAX_CACHED_REGS = 65_536


def _not_live(name: str) -> NotFoundError:
    return NotFoundError("worker", name, "register it first (POST /v1/workers)")


class RedisStore:
    """Workers, leases, free blocks, jobs, transfers, loads and KV events in Redis."""

    def __init__(self, url: str, *, prefix: str = "toposched:", clock: Clock = time.time,
                 connect_timeout_s: float = 0.5, socket_timeout_s: float = 1.0,
                 finished_ttl_s: float = 3600.0, safety_ttl_s: float = 60.0,
                 event_maxlen: int = DEFAULT_EVENT_MAXLEN) -> None:
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
        scripts = {"entries": _ENTRIES, "register": _REGISTER, "heartbeat": _HEARTBEAT,
                   "live": _LIVE, "allocate": _ALLOCATE, "set_blocks": _SET_BLOCKS,
                   "put_job": _PUT_JOB,
                   "remove": _REMOVE, "take_delayed": _TAKE_DELAYED,
                   "reserve": _RESERVE, "release_load": _RELEASE_LOAD}
        self._lua = {name: self._r.register_script(src) for name, src in scripts.items()}
        self._blmpop = True  # until a server older than Redis 7 says otherwise
        #: Parsed registrations by the JSON they were stored as: listing workers reads
        #: every registration per route request, and validating 256 of them again
        #: each time cost more than the Redis round trip.
        self._regs: dict[str, WorkerRegistration] = {}

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _worker_keys(self, name: str) -> list[str]:
        return [self._k("workers"), self._k("w", name), self._k("used", name),
                self._k("jobs", name)]

    def _safety_ms(self, ttl_s: float) -> int:
        return int(max(self._safety_s, 3 * ttl_s) * 1000)

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._lua[script](keys=list(keys), args=list(args))

    async def _blocking_call(self, call: Awaitable[_T], wait_s: float) -> _T:
        return await asyncio.wait_for(call, wait_s + self._grace_s)

    @_translate
    async def aclose(self) -> None:
        """Close both connection pools."""
        await self._r.aclose()
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
        keys = self._worker_keys(reg.name)
        epoch = await self._run("register", [*keys[:2], self._k("epoch", reg.name), *keys[2:]],
                                [reg.name, reg.model_dump_json(), repr(ttl_s), repr(expires),
                                 reg.layout.num_blocks, self._safety_ms(ttl_s)])
        return Lease(worker=reg.name, epoch=int(epoch), ttl_s=ttl_s, expires_at=expires)

    @_translate
    async def heartbeat(self, name: str) -> Lease:
        """Extend a live worker's lease by its TTL."""
        found = await self._run("heartbeat", self._worker_keys(name),
                                [name, repr(self._clock())])
        if found is None:
            raise _not_live(name)
        epoch, ttl, expires = found
        return Lease(worker=name, epoch=int(epoch), ttl_s=float(ttl), expires_at=float(expires))

    @_translate
    async def remove_worker(self, name: str) -> bool:
        """Forget a worker and its queued jobs; False when it was not registered."""
        return bool(await self._run("remove", self._worker_keys(name), [name, ""]))

    @_translate
    async def get_worker(self, name: str) -> WorkerEntry:
        """A live worker by name."""
        entry = (await self._entries([name])).get(name)
        if entry is None or entry.lease.expires_at <= self._clock():
            raise _not_live(name)
        return entry

    @_translate
    async def list_workers(self) -> list[WorkerEntry]:
        """Every live worker, by name."""
        now = self._clock()
        names = _texts(await self._r.zrangebyscore(self._k("workers"), f"({now!r}", "+inf"))
        entries = await self._entries(sorted(names))
        return [e for _, e in sorted(entries.items()) if e.lease.expires_at > now]

    async def _entries(self, names: Sequence[str]) -> dict[str, WorkerEntry]:
        if not names:
            return {}
        keys = [key for name in names for key in (self._k("w", name), self._k("used", name))]
        out: dict[str, WorkerEntry] = {}
        for reg, epoch, ttl, expires, nblocks, used in json.loads(
                await self._run("entries", keys, [])):
            registration = self._registration(reg)
            name = registration.name
            out[name] = WorkerEntry.model_construct(
                registration=registration,
                # Checked when the worker registered; built without validating again.
                lease=Lease.model_construct(worker=name, epoch=int(epoch), ttl_s=float(ttl),
                                            expires_at=float(expires)),
                free_blocks=int(nblocks) - int(used))
        return out

    def _registration(self, text: str) -> WorkerRegistration:
        """The registration stored as ``text``, parsed once per distinct text."""
        cached = self._regs.get(text)
        if cached is not None:
            return cached
        if len(self._regs) >= _MAX_CACHED_REGS:  # workers come and go: start over
            self._regs.clear()
        reg = WorkerRegistration.model_validate_json(text)
        self._regs[text] = reg
        return reg

    @_translate
    async def expire(self) -> list[str]:
        """Remove workers whose lease ran out and apply due delayed releases; return the
        names of the removed workers (each reported by exactly one replica)."""
        now = repr(self._clock())
        due = _texts(await self._r.zrangebyscore(self._k("workers"), "-inf", now))
        gone = [name for name in sorted(due)
                if await self._run("remove", self._worker_keys(name), [name, now])]
        for member in _texts(await self._r.zrangebyscore(self._k("delayed"), "-inf", now)):
            name = json.loads(member)[0]
            await self._run("take_delayed", [self._k("delayed"), self._k("w", name),
                                             self._k("used", name)], [member])
        return gone

    # -- KV blocks ----------------------------------------------------------------

    @_translate
    async def allocate_blocks(self, name: str, count: int) -> list[int]:
        """Take ``count`` free blocks of a worker (lowest ids first), atomically."""
        reply = await self._run("allocate", [self._k("w", name), self._k("used", name)],
                                [repr(self._clock()), count])
        if reply[0] == -1:
            raise _not_live(name)
        if reply[0] == -2:
            raise UnschedulableError([f"{name} has {reply[1]} free KV blocks, {count} needed"])
        return [int(b) for b in reply[1:]]

    @_translate
    async def claim_blocks(self, name: str, blocks: Sequence[int]) -> None:
        """Mark given blocks of a worker as used (explicit destination blocks)."""
        if await self._set_blocks(name, blocks, 1, repr(self._clock())) < 0:
            raise _not_live(name)

    @_translate
    async def release_blocks(self, name: str, blocks: Sequence[int]) -> None:
        """Return blocks to a worker's free list (failed transfer, evicted KV)."""
        await self._set_blocks(name, blocks, 0, "")

    async def _set_blocks(self, name: str, blocks: Sequence[int], bit: int, now: str) -> int:
        return int(await self._run("set_blocks", [self._k("w", name), self._k("used", name)],
                                   [now, bit, *map(int, blocks)]))

    @_translate
    async def release_blocks_at(self, name: str, blocks: Sequence[int], when: float) -> None:
        """Return blocks to the free list once the clock reaches ``when`` (quarantine)."""
        member = json.dumps([name, [int(b) for b in blocks], uuid.uuid4().hex])
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
        if await self._run("live", [self._k("w", name)], [repr(self._clock())]) is None:
            raise _not_live(name)
        key = self._k("jobs", name)
        texts = _texts(await self._r.lpop(key, _MAX_JOBS))
        if not [t for t in texts if t != _WAKE] and timeout_s > 0:
            texts = await self._blocking_call(self._pop_waiting(key, timeout_s), timeout_s)
        return [TransferJob.model_validate_json(t) for t in texts if t != _WAKE]

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
            pipe.persist(key)
        else:
            pipe.pexpire(key, self._finished_ms)
        pipe.publish(self._k("tchan", plan.plan_id), "1")
        await pipe.execute()

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
        key = self._k("load", worker)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping={"max_tokens": max_tokens, "max_requests": max_requests})
        pipe.hsetnx(key, "tokens", 0)
        pipe.hsetnx(key, "requests", 0)
        pipe.sadd(self._k("loads"), worker)
        await pipe.execute()

    @_translate
    async def reserve(self, worker: str, tokens: int, requests: int = 1) -> bool:
        """Add the load if it fits the worker's capacity; False (and nothing added) if not."""
        check_amounts(tokens, requests)
        done = int(await self._run("reserve", [self._k("load", worker)], [tokens, requests]))
        if done < 0:
            raise NotFoundError("worker", worker, "set its capacity first")
        return done == 1

    @_translate
    async def release(self, worker: str, tokens: int, requests: int = 1) -> None:
        """Take load back (never below zero); unknown workers are ignored."""
        check_amounts(tokens, requests)
        await self._run("release_load", [self._k("load", worker)], [tokens, requests])

    @_translate
    async def loads(self) -> dict[str, WorkerLoad]:
        """Every worker with a capacity, by name."""
        names = sorted(_texts(list(await self._r.smembers(self._k("loads")))))
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self._k("load", name))
        replies = await pipe.execute()
        # the store wrote these fields itself: construct without re-validating (hot path)
        return {name: _load(fields) for name, fields in zip(names, replies, strict=True)
                if fields}

    @_translate
    async def drop_load(self, worker: str) -> bool:
        """Forget a worker's capacity and load; False when it had none."""
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k("load", worker))
        pipe.srem(self._k("loads"), worker)
        deleted, _ = await pipe.execute()
        return bool(deleted)

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
