"""In-memory :class:`~scheduler.state.base.TransferStore` for one scheduler process.

Must be used from one asyncio event loop (the API server's); a sidecar's job channel
(long-poll or stream) waits on a future of its own that queuing a job resolves, so a
queued job wakes it in the next turn of the loop (no lock to take again, no extra task).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from scheduler.state.base import (
    BlockGrant,
    Clock,
    WorkerDrainingError,
    WorkerEntry,
    WorkerRegisteredAgainError,
)
from scheduler.state.journal import Journal
from scheduler.state.reservations import LoadStore, WorkerLoad
from scheduler.transfer.plan import Lease, TransferJob, TransferRecord, WorkerRegistration
from topology.errors import ConflictError, NotFoundError, UnschedulableError


class FreeBlocks:
    """A worker's free KV block ids as a bitmap, one byte per block.

    Not a set: the garbage collector walks every element of a set on each full
    collection, and 256 workers × 4,096 free ids made those pauses ~18 ms longer
    (the route benchmark's p99). A bytearray holds no objects, so nothing is walked.
    """

    __slots__ = ("_bits", "_count", "_low")

    def __init__(self, total: int) -> None:
        self._bits = bytearray(b"\x01") * total
        self._count = total
        #: No free block has a lower id: allocation searches up from here.
        self._low = 0

    def __len__(self) -> int:
        return self._count

    def take_lowest(self, count: int) -> list[int]:
        """The ``count`` lowest free blocks, now used (``count`` ≤ free blocks)."""
        taken: list[int] = []
        bits, block = self._bits, self._low
        while len(taken) < count:
            block = bits.find(1, block)
            bits[block] = 0
            taken.append(block)
            block += 1
        self._count -= len(taken)
        self._low = block
        return taken

    def take(self, blocks: Sequence[int]) -> None:
        """Mark the given (in-range) blocks used."""
        self._set(blocks, 0)

    def give_back(self, blocks: Sequence[int]) -> None:
        """Return the given (in-range) blocks to the free blocks."""
        self._set(blocks, 1)

    def _set(self, blocks: Sequence[int], free: int) -> None:
        bits = self._bits
        for block in blocks:
            if 0 <= block < len(bits) and bits[block] != free:
                bits[block] = free
                self._count += 1 if free else -1
                if free:
                    self._low = min(self._low, block)


@dataclass
class _Worker:
    reg: WorkerRegistration
    lease: Lease
    free: FreeBlocks
    #: Queued jobs as JSON text (parsed when a sidecar fetches them): a queue nobody
    #: drains (a sidecar gone quiet) then holds strings, not model graphs that every
    #: full garbage collection would walk.
    jobs: deque[str] = field(default_factory=deque)
    #: The last entry handed out; reused while lease and free count are unchanged.
    entry: WorkerEntry | None = None
    #: Its sidecar is draining: no new transfer may use it (a new registration clears it).
    draining: bool = False

    def current(self) -> WorkerEntry:
        """This worker as a :class:`WorkerEntry`, rebuilt only when it changed.

        The route path lists every worker per request; validating 256 entries each
        time cost more than the policy. The fields were validated when stored, so
        ``model_construct`` is safe here.
        """
        entry = self.entry
        if (entry is None or entry.lease is not self.lease
                or entry.free_blocks != len(self.free) or entry.draining != self.draining):
            entry = WorkerEntry.model_construct(registration=self.reg, lease=self.lease,
                                                free_blocks=len(self.free),
                                                draining=self.draining)
            self.entry = entry
        return entry


_EXPIRES = attrgetter("lease.expires_at")


#: Parsed records the memory store keeps (see ``MemoryStore._parsed``): enough for the
#: transfers in flight at once; few enough that a full garbage collection walking them
#: stays short (~10 µs a record).
PARSED_KEPT = 256


class _Waiters:
    """Tasks waiting for the next change of a key (a worker's job queue, a record): a
    change wakes that key's waiters only."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[asyncio.Future[None]]] = {}

    def wake(self, key: str) -> None:
        """``key`` changed: wake everything waiting for it."""
        for waiter in self._by_key.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def next_change(self, key: str) -> None:
        """Wait until :meth:`wake` is called for ``key``."""
        waiter = asyncio.get_running_loop().create_future()
        waiting = self._by_key.setdefault(key, set())
        waiting.add(waiter)
        try:
            await waiter
        finally:
            waiting.discard(waiter)
            if not waiting and self._by_key.get(key) is waiting:
                del self._by_key[key]


class MemoryStore:
    """Workers, leases, free lists, job queues and transfer records in process memory."""

    def __init__(self, clock: Clock = time.time, *, max_transfers: int = 100_000) -> None:
        self._clock = clock
        #: Finished transfer records beyond this many are forgotten, oldest first.
        self.max_transfers = max_transfers
        self._workers: dict[str, _Worker] = {}
        #: The last listing (None: rebuild it), valid until its first lease runs out;
        #: workers whose entry changed since are refreshed in place (the route path
        #: lists every worker per request, and a request changes two of them).
        self._listing: list[WorkerEntry] | None = None
        self._listed_until = 0.0
        #: The listing's names, sorted (a worker joining or leaving is one insertion or
        #: deletion here and in the listing: relisting 10,000 workers cost ~50 ms).
        self._names: list[str] = []
        self._dirty: set[str] = set()
        #: Every worker that joined, left or whose free blocks changed (not heartbeats:
        #: :meth:`changed_since` answers None once a lease may have lapsed), for readers
        #: that catch up by name.
        self.journal = Journal()
        self._epochs: dict[str, int] = {}
        #: Records at rest, by plan id: (state, source worker, destination worker, JSON
        #: text). Up to ``max_transfers`` are kept; as models, every full garbage
        #: collection walked all of them (~10 µs each: a 100,000-record store paused
        #: the process for about a second). Tuples of strings are not walked.
        self._transfers: dict[str, tuple[str, str, str, str]] = {}
        #: The last few records stored or read, as models (plan id → (text, record)):
        #: a transfer's record is read several times between two changes (the report,
        #: the change it makes, long-polls), and parsing it is most of a read. Valid
        #: while the stored text is that very string; at most :data:`PARSED_KEPT`.
        self._parsed: dict[str, tuple[str, TransferRecord]] = {}
        self._versions: dict[str, int] = {}
        #: (not_after, plan id) of transfers stored pending; finished ones are dropped
        #: when they come up.
        self._deadlines: list[tuple[float, str]] = []
        #: Long-polls of a record waiting for its next change, by plan id (a change wakes
        #: the waiters of that record only, not every long-poll in flight).
        self._record_waiters = _Waiters()
        #: The job channels waiting for a worker's first job.
        self._job_waiters = _Waiters()
        self._delayed: list[tuple[float, str, tuple[int, ...], int | None]] = []

    def _live(self, name: str) -> _Worker:
        worker = self._workers.get(name)
        if worker is None or worker.lease.expires_at <= self._clock():
            raise NotFoundError("worker", name, "register it first (POST /v1/workers)")
        return worker

    async def register_worker(self, reg: WorkerRegistration, ttl_s: float) -> Lease:
        """Add or replace a worker; a new epoch, a fresh lease, every block free."""
        epoch = self._epochs.get(reg.name, 0) + 1
        self._epochs[reg.name] = epoch
        lease = Lease(worker=reg.name, epoch=epoch, ttl_s=ttl_s,
                      expires_at=self._clock() + ttl_s)
        worker = self._workers[reg.name] = _Worker(reg, lease, FreeBlocks(reg.layout.num_blocks))
        self.journal.touch(reg.name)
        if self._listing is not None:
            slot = bisect_left(self._names, reg.name)
            if slot < len(self._names) and self._names[slot] == reg.name:
                self._listing[slot] = worker.current()
            else:
                self._names.insert(slot, reg.name)
                self._listing.insert(slot, worker.current())
            self._listed_until = min(self._listed_until, lease.expires_at)
        return lease

    async def heartbeat(self, name: str) -> Lease:
        """Extend a live worker's lease by its TTL."""
        worker = self._live(name)
        worker.lease = worker.lease.model_copy(
            update={"expires_at": self._clock() + worker.lease.ttl_s})
        # not journaled: a later expiry changes nothing a reader by name looks at, and
        # thousands of heartbeats would push the routes' changes out of the journal
        self._dirty.add(name)
        return worker.lease

    async def remove_worker(self, name: str) -> bool:
        """Forget a worker and its queued jobs; False when it was not registered."""
        worker = self._workers.pop(name, None)
        self.journal.touch(name)
        slot = bisect_left(self._names, name)
        if self._listing is not None and slot < len(self._names) and self._names[slot] == name:
            del self._names[slot], self._listing[slot]
        self._job_waiters.wake(name)
        return worker is not None

    async def get_worker(self, name: str) -> WorkerEntry:
        """A live worker by name."""
        return self._live(name).current()

    async def drain_worker(self, name: str) -> WorkerEntry:
        """Mark a live worker draining (idempotent): no new transfer may use it."""
        worker = self._live(name)
        if not worker.draining:
            worker.draining = True
            self._touch(name)
        return worker.current()

    async def list_workers(self) -> list[WorkerEntry]:
        """Every live worker, by name."""
        now = self._clock()
        listing = self._listing
        if listing is None:
            return list(self._relist(now))
        self._refresh_dirty(listing)
        if now >= self._listed_until:
            # Heartbeats moved expiries later: usually nobody expired, and one pass in C
            # finds the new earliest expiry. Only when someone did is the listing rebuilt.
            self._listed_until = min(map(_EXPIRES, listing), default=float("inf"))
            if self._listed_until <= now:
                return list(self._relist(now))
        return list(listing)

    def _touch(self, name: str) -> None:
        self._dirty.add(name)
        self.journal.touch(name)

    def _refresh_dirty(self, listing: list[WorkerEntry]) -> None:
        """Bring the listing's entries of heartbeaten workers up to date."""
        names = self._names
        for name in self._dirty:
            slot = bisect_left(names, name)
            if slot < len(names) and names[slot] == name:
                listing[slot] = self._workers[name].current()
        self._dirty.clear()

    def _relist(self, now: float) -> list[WorkerEntry]:
        self.journal.forget()
        live = [w.current() for _, w in sorted(self._workers.items())
                if w.lease.expires_at > now]
        self._listing, self._dirty = live, set()
        self._names = [e.registration.name for e in live]
        # A heartbeat only moves expiry later, so the earliest one seen stays a safe bound.
        self._listed_until = min((e.lease.expires_at for e in live), default=float("inf"))
        return live

    def changed_since(self, version: int, limit: int) -> set[str] | None:
        """Names of the workers whose entry may have changed (or who joined or left) since
        the journal's ``version``; None when that is not known, when more than ``limit``
        changes happened, or when a lease ran out (read the listing then: it leaves out
        the lapsed workers until they are removed)."""
        if self._listing is None or self._clock() >= self._listed_until:
            return None
        return self.journal.since(version, limit)

    def entry(self, name: str) -> WorkerEntry | None:
        """The listing's entry of ``name`` (None: not registered, or its lease ran out)."""
        worker = self._workers.get(name)
        if worker is None or worker.lease.expires_at <= self._clock():
            return None
        return worker.current()

    async def list_with_loads(self, loads: LoadStore
                              ) -> tuple[list[WorkerEntry], dict[str, WorkerLoad]]:
        """``list_workers()`` and ``loads.loads()`` (two reads: they are apart here)."""
        return await self.list_workers(), await loads.loads()

    async def expire(self) -> list[str]:
        """Remove workers whose lease ran out and apply due delayed releases; return the
        names of the removed workers."""
        now = self._clock()
        gone = self._expired(now)
        for name in gone:
            await self.remove_worker(name)
        due = [item for item in self._delayed if item[0] <= now]
        self._delayed = [item for item in self._delayed if item[0] > now]
        for _, name, blocks, epoch in due:
            await self.release_blocks(name, blocks, epoch)
        return gone

    def _expired(self, now: float) -> list[str]:
        """Names of the workers whose lease ran out by ``now``. While the listing holds
        every worker, its earliest expiry bounds them: before it nobody expired and no
        worker is looked at (this runs every few seconds on the event loop; a pass over
        10,000 leases in Python took ~30 ms)."""
        listing = self._listing
        if listing is not None and len(listing) == len(self._workers):
            self._refresh_dirty(listing)
            if now < self._listed_until:
                return []
            self._listed_until = min(map(_EXPIRES, listing), default=float("inf"))
            if now < self._listed_until:
                return []
        return [name for name, w in self._workers.items() if w.lease.expires_at <= now]

    async def allocate_blocks(self, name: str, count: int) -> list[int]:
        """Take ``count`` free blocks of a worker (lowest ids first)."""
        return list((await self.take_blocks({name: count}))[name].blocks)

    async def take_blocks(self, counts: Mapping[str, int]) -> dict[str, BlockGrant]:
        """Every named worker's entry, taking ``counts[name]`` free blocks of each in one
        step, all or nothing."""
        workers: dict[str, _Worker] = {}
        for name, count in counts.items():
            workers[name] = worker = self._live(name)
            if worker.draining:
                raise WorkerDrainingError(name)
            if count > len(worker.free):
                raise UnschedulableError([f"{name} has {len(worker.free)} free KV blocks, "
                                          f"{count} needed"])
        grants = {}
        for name, count in counts.items():
            taken = workers[name].free.take_lowest(count)
            if taken:
                self._touch(name)
            grants[name] = BlockGrant(workers[name].current(), tuple(taken))
        return grants

    async def claim_blocks(self, name: str, blocks: Sequence[int]) -> None:
        """Mark given blocks of a worker as used (explicit destination blocks)."""
        self._live(name).free.take(blocks)
        self._touch(name)

    async def release_blocks(self, name: str, blocks: Sequence[int],
                             epoch: int | None = None) -> bool:
        """Return blocks to a worker's free list (of registration ``epoch`` if given)."""
        worker = self._workers.get(name)
        if worker is None or epoch not in (None, worker.lease.epoch):
            return False
        worker.free.give_back(blocks)
        self._touch(name)
        return True

    async def release_blocks_at(self, name: str, blocks: Sequence[int], when: float,
                                epoch: int | None = None) -> None:
        """Return blocks to the free list once the clock reaches ``when`` (quarantine)."""
        self._delayed.append((when, name, tuple(blocks), epoch))

    async def put_job(self, name: str, job: TransferJob) -> None:
        """Queue a job for a worker's sidecar and wake its long-poll."""
        self._live(name).jobs.append(job.model_dump_json())
        self._job_waiters.wake(name)

    async def wait_jobs(self, name: str, timeout_s: float) -> list[TransferJob]:
        """Queued jobs of a worker, waiting up to ``timeout_s`` for the first one."""
        return [TransferJob.model_validate_json(text)
                for text in await self.wait_job_texts(name, timeout_s)]

    async def wait_job_texts(self, name: str, timeout_s: float) -> list[str]:
        """As :meth:`wait_jobs`, the jobs as the JSON text they were queued as."""
        worker = self._live(name)
        if not worker.jobs and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._job_waiters.next_change(name)
        texts = list(worker.jobs)
        worker.jobs.clear()
        return texts

    async def start_transfer(self, record: TransferRecord,
                             jobs: Sequence[tuple[str, TransferJob]]) -> None:
        """Store a new pending record and queue its jobs, all or nothing."""
        plan_id = record.plan.plan_id
        if plan_id in self._transfers:
            raise ConflictError(f"transfer {plan_id!r} already exists")
        for side in (record.plan.src, record.plan.dst):
            worker = self._live(side.worker)
            if worker.lease.epoch != side.epoch:
                raise WorkerRegisteredAgainError(side.worker, side.epoch)
            if worker.draining:
                raise WorkerDrainingError(side.worker)
        queues = [(name, self._live(name).jobs) for name, _ in jobs]
        await self.put_transfer(record)
        for (name, queue), (_, job) in zip(queues, jobs, strict=True):
            queue.append(job.model_dump_json())
            self._job_waiters.wake(name)

    async def put_transfer(self, record: TransferRecord) -> None:
        """Store (insert or replace) a transfer record, keyed by its plan id."""
        plan_id = record.plan.plan_id
        was = self._transfers.get(plan_id)
        text = record.model_dump_json()
        self._transfers[plan_id] = (record.state, record.plan.src.worker,
                                    record.plan.dst.worker, text)
        self._keep_parsed(plan_id, text, record)  # frozen: what a read would parse back
        if record.state == "pending" and (was is None or was[0] != "pending"):
            heapq.heappush(self._deadlines, (record.plan.not_after, plan_id))
        self._versions[plan_id] = self._versions.get(plan_id, 0) + 1
        if len(self._transfers) > self.max_transfers:
            self._forget_finished()
        self._record_waiters.wake(plan_id)

    def _forget_finished(self) -> None:
        """Drop the oldest finished records (a tenth of the cap) to bound memory."""
        finished = [pid for pid, rest in self._transfers.items() if rest[0] != "pending"]
        for plan_id in finished[:max(1, self.max_transfers // 10)]:
            del self._transfers[plan_id]
            self._versions.pop(plan_id, None)
            self._parsed.pop(plan_id, None)

    async def read_transfer(self, plan_id: str) -> tuple[TransferRecord, int]:
        """A transfer record and its version."""
        return await self.get_transfer(plan_id), self._versions.get(plan_id, 0)

    async def replace_transfer(self, record: TransferRecord, version: int) -> int | None:
        """Store ``record`` if its version is still ``version``; the new version."""
        plan_id = record.plan.plan_id
        if plan_id not in self._transfers:
            raise NotFoundError("transfer", plan_id)
        if self._versions.get(plan_id, 0) != version:
            return None
        await self.put_transfer(record)
        return self._versions[plan_id]

    async def due_transfers(self, now: float, limit: int = 1000) -> list[str]:
        """Pending transfers whose ``not_after`` is ``now`` or earlier."""
        due: list[tuple[float, str]] = []
        while self._deadlines and self._deadlines[0][0] <= now and len(due) < limit:
            item = heapq.heappop(self._deadlines)
            if self._transfers.get(item[1], ("",))[0] == "pending":
                due.append(item)
        for item in due:  # still pending: they stay due until they end
            heapq.heappush(self._deadlines, item)
        return [plan_id for _, plan_id in due]

    async def wait_transfer(self, plan_id: str, timeout_s: float,
                            version: int) -> tuple[TransferRecord, int]:
        """The record once its version (count of stores) exceeds ``version``, or as is
        after ``timeout_s``; returns it with its current version."""
        await self.get_transfer(plan_id)
        if timeout_s > 0 and self._versions.get(plan_id, 0) <= version:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    while self._versions.get(plan_id, 0) <= version:
                        await self._record_waiters.next_change(plan_id)
        return await self.get_transfer(plan_id), self._versions.get(plan_id, 0)

    async def get_transfer(self, plan_id: str) -> TransferRecord:
        """A transfer record by plan id."""
        rest = self._transfers.get(plan_id)
        if rest is None:
            raise NotFoundError("transfer", plan_id)
        text = rest[3]
        hit = self._parsed.get(plan_id)
        if hit is not None and hit[0] is text:
            return hit[1]
        record = TransferRecord.model_validate_json(text)
        self._keep_parsed(plan_id, text, record)
        return record

    def _keep_parsed(self, plan_id: str, text: str, record: TransferRecord) -> None:
        self._parsed.pop(plan_id, None)
        self._parsed[plan_id] = (text, record)
        if len(self._parsed) > PARSED_KEPT:  # the least recently kept goes
            del self._parsed[next(iter(self._parsed))]

    async def transfers_of(self, name: str) -> list[TransferRecord]:
        """Pending transfers that have ``name`` on either side."""
        return [TransferRecord.model_validate_json(text)
                for state, src, dst, text in self._transfers.values()
                if state == "pending" and name in (src, dst)]
