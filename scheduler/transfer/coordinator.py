"""The control plane of KV transfers: registrations, plans, jobs, reports, failures.

Transport-free: the REST layer calls these methods; a store holds the state. One
transfer goes: ``submit`` builds and validates a plan, queues ``execute`` for the
initiator and, when the target has something to wait for, ``await`` for the target; each
sidecar that got a job reports once. A READ plan told through the scheduler
(``notify: scheduler``, the READ default) has a *passive* target: the prefill side
serves the read from memory it registered and waits for nothing, so it gets no
``await``; the initiator (the destination) reports, which ends the transfer, and the
target then gets ``complete`` with its blocks (it may reuse them; the job stream writes
several at once) — or, if the transfer failed or expired, ``abort`` with the plan. It
sends no report. Every transfer ends, exactly once, in one of three states:

* ``done`` — the destination side reported success;
* ``failed`` — a side reported a failure, or a side's lease ran out, it deregistered or
  registered again; ``recompute`` is set and ``abort`` goes to the side still waiting
  (and to a passive target, which holds the blocks being read);
* ``expired`` — no outcome by the plan's ``not_after`` plus ``expiry_grace_s``: the
  sweep (:meth:`TransferCoordinator.expire`) ends it, with ``recompute`` set (``abort``
  goes to a passive target only: the other sides stopped waiting at the deadline).

Each state change is a compare-and-set on the record's version
(:meth:`~scheduler.state.base.TransferStore.replace_transfer`), so of two replicas
taking the two sides' reports at once, or a report racing the sweep, exactly one
ends the transfer; only that one gives its blocks back and tells the listeners
(:attr:`TransferCoordinator.listeners`: the service's telemetry and load reservations).
Blocks: source blocks the scheduler took for the transfer (a routed one) go back when
it ends, whatever the state; the destination's blocks of a failed or expired transfer
are quarantined until the plan's deadline has passed (a hung initiator may still write
until then); those of a done transfer belong to the decode request, and come back when
its engine releases them (:meth:`TransferCoordinator.release`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from json.decoder import scanstring  # type: ignore[attr-defined]  # typeshed lacks it

from pydantic import BaseModel, ConfigDict, Field

from scheduler.state.base import BlockGrant, Clock, TransferStore, WorkerEntry
from scheduler.transfer.build import DEFAULT_DEADLINE_S, build_plan
from scheduler.transfer.hints import hints_for_workers
from scheduler.transfer.plan import (
    BlockId,
    Lease,
    Mode,
    Notify,
    TransferJob,
    TransferPlan,
    TransferRecord,
    TransferReport,
    TransferState,
    TransportHints,
    WorkerRegistration,
    passive_target,
)
from topology.distance import DistanceModel
from topology.errors import ConflictError, Issue, NotFoundError, ValidationError
from topology.spec import FabricSpec

log = logging.getLogger(__name__)


class TransferRequest(BaseModel):
    """A simple transfer request: who to whom, which blocks, which mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    src: str = Field(min_length=1)
    dst: str = Field(min_length=1)
    src_blocks: tuple[BlockId, ...] = Field(min_length=1, max_length=1 << 20)
    dst_blocks: tuple[BlockId, ...] | None = Field(
        default=None, description="omit to allocate from the destination's free list")
    cached_prefix: int = Field(default=0, ge=0, description="leading blocks dst already has")
    mode: Mode | None = Field(default=None, description="default: the deployment's mode")
    notify: Notify | None = Field(default=None, description="default: by mode (see build)")
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    plan_id: str | None = Field(default=None, min_length=1, max_length=128,
                                pattern=r"^[A-Za-z0-9_.:-]+$")
    block_hashes: tuple[int, ...] = Field(
        default=(), max_length=1 << 20,
        description="prefix hashes of src_blocks (same length), announced by the destination")


#: Extra seconds a failed transfer's destination blocks stay unused after ``not_after``.
QUARANTINE_SLACK_S = 1.0
#: Seconds past ``not_after`` before the sweep expires a transfer nobody reported: each
#: side stops at ``not_after`` and reports within its watchdog's half second.
EXPIRY_GRACE_S = 1.0
#: Compare-and-set attempts on one record before giving up (many writers at once).
MAX_CHANGE_TRIES = 32

#: Told once about every transfer that ended (done, failed or expired).
EndListener = Callable[[TransferRecord], Awaitable[None]]


#: Cached (src, dst) transport hints kept at most (256 × 256 workers would fill it).
HINT_CACHE_SIZE = 65_536


def _same(a: WorkerRegistration, b: WorkerRegistration) -> bool:
    # Identity first: the memory store hands out the registration it stored.
    return a is b or a == b


def _new_id() -> str:
    return f"xfer-{uuid.uuid4().hex[:16]}"


_EXECUTE_HEAD = '{"kind":"execute","plan_id":'


def _execute_plan_id(text: str) -> str | None:
    """The plan id of an ``execute`` job's JSON text, None for another job. The stores
    keep ``model_dump_json`` text (kind, then plan_id, first): the id is read off its
    head without parsing the plan behind it; other text is parsed whole."""
    start = len(_EXECUTE_HEAD) + 1
    if text.startswith(_EXECUTE_HEAD + '"'):
        with contextlib.suppress(ValueError):
            plan_id: str = scanstring(text, start)[0]
            return plan_id
    if text.startswith('{"kind":"'):
        return None
    job = json.loads(text)
    return str(job["plan_id"]) if isinstance(job, dict) and job.get("kind") == "execute" \
        else None


class TransferCoordinator:
    """Registrations, plan building, job delivery and report bookkeeping."""

    def __init__(self, store: TransferStore, *, mode: Mode = "READ", lease_ttl_s: float = 10.0,
                 deadline_s: float = DEFAULT_DEADLINE_S, spec: FabricSpec | None = None,
                 clock: Clock = time.time, expiry_grace_s: float = EXPIRY_GRACE_S,
                 new_id: Callable[[], str] = _new_id) -> None:
        """``clock``: wall time (plans' ``not_after`` and records are stamped with it, and
        replicas on several hosts compare them)."""
        self.store = store
        self.mode: Mode = mode
        self.lease_ttl_s = lease_ttl_s
        self.deadline_s = deadline_s
        self.expiry_grace_s = expiry_grace_s
        self._spec = spec
        self._model = DistanceModel(spec) if spec is not None else None
        self._clock = clock
        self._new_id = new_id
        #: Called once per ended transfer, by the coordinator that ended it.
        self.listeners: list[EndListener] = []
        #: Transport hints per (src, dst) name pair with the registrations they were
        #: derived from: deriving them walks the fabric, and a router sends most
        #: requests over the same few hundred pairs.
        self._hints: dict[tuple[str, str], tuple[WorkerRegistration, WorkerRegistration,
                                                 TransportHints]] = {}

    async def register(self, reg: WorkerRegistration) -> Lease:
        """Register (or re-register) a worker; pending transfers of its old epoch fail."""
        await self._fail_pending(reg.name, f"{reg.name} re-registered")
        return await self.store.register_worker(reg, self.lease_ttl_s)

    async def drain(self, name: str) -> WorkerEntry:
        """Mark a worker draining (its sidecar is shutting down; idempotent): from now on
        :meth:`submit` and :meth:`submit_routed` refuse transfers that would use it on
        either side (:class:`~scheduler.state.base.WorkerDrainingError`, 409: the store's
        ``take_blocks`` refuses it, taking nothing); its pending transfers go on. It
        takes new transfers again once it registers again."""
        return await self.store.drain_worker(name)

    async def deregister(self, name: str) -> None:
        """Remove a worker; its pending transfers fail and peers are told to recompute."""
        if not await self.store.remove_worker(name):
            raise NotFoundError("worker", name)
        await self._fail_pending(name, f"{name} deregistered")

    async def expire(self) -> list[str]:
        """Drop workers whose lease ran out and fail their pending transfers; expire
        transfers with no outcome ``expiry_grace_s`` past their deadline. Returns the
        names of the dropped workers."""
        gone = await self.store.expire()
        for name in gone:
            await self._fail_pending(name, f"lease of {name} expired")
        for plan_id in await self.store.due_transfers(self._clock() - self.expiry_grace_s):
            with contextlib.suppress(NotFoundError):
                await self._end(plan_id, "expired", "no outcome reported before the "
                                "transfer's deadline", skip=None)
        return gone

    async def submit(self, request: TransferRequest) -> TransferRecord:
        """Build, validate and queue the plan for a request."""
        # A caller's plan id is checked before any block is taken (the store checks
        # again when it stores the record); a fresh id cannot exist.
        if request.plan_id is not None and await self._exists(request.plan_id):
            raise ConflictError(f"transfer {request.plan_id!r} already exists")
        moving = len(request.src_blocks) - request.cached_prefix
        take = moving if request.dst_blocks is None and moving > 0 else 0
        # One store step reads both sides' entries and takes the destination's blocks.
        grants = await self.store.take_blocks({request.src: 0, request.dst: take})
        dst = grants[request.dst]
        dst_blocks = request.dst_blocks
        if take:
            dst_blocks = (*request.src_blocks[:request.cached_prefix], *dst.blocks)
        return await self._start(request.plan_id or self._new_id(), request,
                                 grants[request.src].entry, dst.entry, dst_blocks,
                                 taken={request.dst: dst} if take else {})

    async def submit_routed(self, src: str, dst: str, blocks: int,
                            block_hashes: Sequence[int] = (), *,
                            reservation_id: str | None = None) -> TransferRecord:
        """Queue a routed transfer of ``blocks`` blocks: taken from the prefill worker's
        free list (its engine writes the prompt's KV there) and from the decode worker's
        in one store step, and given back on both sides if the transfer cannot start.

        The route path's replacement for ``allocate_blocks`` + :meth:`submit`: two store
        round trips in all (take the blocks, store the record with its jobs)."""
        if blocks < 1:
            raise ValidationError("routed transfer", [Issue("blocks", "must be ≥ 1")])
        grants = await self.store.take_blocks({src: blocks, dst: blocks})
        taken = {src: grants[src], dst: grants[dst]}
        try:
            request = TransferRequest(src=src, dst=dst, src_blocks=grants[src].blocks,
                                      block_hashes=tuple(block_hashes))
        except BaseException:
            await self._give_back(taken)
            raise
        return await self._start(self._new_id(), request, grants[src].entry,
                                 grants[dst].entry, grants[dst].blocks, taken=taken,
                                 reservation_id=reservation_id)

    async def _start(self, plan_id: str, request: TransferRequest, src: WorkerEntry,
                     dst: WorkerEntry, dst_blocks: Sequence[int] | None,
                     taken: Mapping[str, BlockGrant],
                     reservation_id: str | None = None) -> TransferRecord:
        """Build the plan, store it with both jobs; blocks in ``taken`` go back on failure
        unless the transfer may have been stored (see :meth:`_store`)."""
        try:
            plan = self._plan(plan_id, request, src, dst, dst_blocks)
            if request.dst_blocks is not None:
                await self.store.claim_blocks(dst.registration.name, plan.dst_blocks)
            record = TransferRecord(plan=plan, created_at=self._clock(),
                                    src_blocks_taken=src.registration.name in taken,
                                    reservation_id=reservation_id)
        except BaseException:
            await self._give_back(taken)
            raise
        await self._store(record, taken)
        return record

    async def _store(self, record: TransferRecord, taken: Mapping[str, BlockGrant]) -> None:
        """Store the record and queue both jobs. A refusal (the id exists, a worker is
        gone) stored nothing, so the blocks go back; any other failure (Redis
        unreachable, a timeout, cancellation) may have come after the store ran, and
        then the jobs use the blocks: they stay taken, a leak until the worker
        re-registers rather than the same blocks handed to two transfers."""
        plan = record.plan
        jobs = [(plan.initiator, TransferJob(kind="execute", plan_id=plan.plan_id, plan=plan))]
        if not passive_target(plan):
            jobs.append((plan.target, TransferJob(kind="await", plan_id=plan.plan_id,
                                                  plan=plan)))
        try:
            await self.store.start_transfer(record, jobs)
        except (ConflictError, NotFoundError):
            await self._give_back(taken)
            raise
        except BaseException:
            log.warning("transfer %s: outcome of storing it unknown; its blocks stay taken",
                        plan.plan_id)
            raise
        # Let the sidecars' job channels, woken by the queued jobs, write them out before
        # this request goes on (answering it serialises the whole record).
        await asyncio.sleep(0)

    async def _give_back(self, taken: Mapping[str, BlockGrant]) -> None:
        # to the registration they were taken from only: a worker that registered again
        # meanwhile (all its blocks free) may have handed them out since
        for name, grant in taken.items():
            await self.store.release_blocks(name, grant.blocks, grant.entry.lease.epoch)

    async def _exists(self, plan_id: str) -> bool:
        try:
            await self.store.get_transfer(plan_id)
        except NotFoundError:
            return False
        return True

    def _plan(self, plan_id: str, request: TransferRequest, src: WorkerEntry,
              dst: WorkerEntry, dst_blocks: Sequence[int] | None) -> TransferPlan:
        hints = self._hints_for(src.registration, dst.registration)
        deadline_s = request.deadline_s or self.deadline_s
        return build_plan(plan_id=plan_id, src=src.registration, dst=dst.registration,
                          src_blocks=request.src_blocks, dst_blocks=dst_blocks,
                          cached_prefix=request.cached_prefix, mode=request.mode or self.mode,
                          hints=hints, epochs=(src.lease.epoch, dst.lease.epoch),
                          deadline_s=deadline_s, not_after=self._clock() + deadline_s,
                          notify=request.notify, block_hashes=request.block_hashes)

    def use_fabric(self, spec: FabricSpec, model: DistanceModel | None = None) -> None:
        """Derive transport hints (NICs, tiers) from ``spec`` from now on."""
        self._spec = spec
        self._model = model if model is not None else DistanceModel(spec)
        self._hints.clear()

    def _hints_for(self, src: WorkerRegistration, dst: WorkerRegistration) -> TransportHints:
        """Hints for the pair, reused while both registrations are unchanged."""
        key = (src.name, dst.name)
        cached = self._hints.get(key)
        if cached is not None and _same(cached[0], src) and _same(cached[1], dst):
            return cached[2]
        if len(self._hints) >= HINT_CACHE_SIZE:  # workers come and go: start over
            self._hints.clear()
        hints = hints_for_workers(src, dst, spec=self._spec, model=self._model)
        self._hints[key] = (src, dst, hints)
        return hints

    async def take_jobs(self, name: str, wait_s: float) -> list[TransferJob]:
        """Long-poll a worker's jobs; stamps ``delivered_at`` on the transfers they start."""
        texts = await self.store.wait_job_texts(name, wait_s)
        await self.delivered(texts)
        return [TransferJob.model_validate_json(text) for text in texts]

    async def next_job_texts(self, name: str, wait_s: float) -> list[str]:
        """A worker's queued jobs as JSON text, waiting up to ``wait_s`` for the first
        (the job stream writes them as they are; call :meth:`delivered` once sent)."""
        return await self.store.wait_job_texts(name, wait_s)

    def now(self) -> float:
        """The coordinator's clock (wall time, as on the records)."""
        return self._clock()

    async def delivered(self, texts: Sequence[str], at: float | None = None) -> None:
        """Stamp ``delivered_at`` (``at``, default now) on the transfers that ``execute``
        jobs among ``texts`` start (the job left for its sidecar)."""
        now = self._clock() if at is None else at
        for text in texts:
            plan_id = _execute_plan_id(text)
            if plan_id is not None:
                with contextlib.suppress(NotFoundError):
                    await self._change(plan_id, lambda r: r.model_copy(
                        update={"delivered_at": now})
                        if r.state == "pending" and r.delivered_at is None else None)

    async def report(self, plan_id: str, report: TransferReport) -> TransferRecord:
        """Record one sidecar's report and move the transfer to done or failed."""
        record = await self.store.get_transfer(plan_id)
        plan = record.plan
        if report.plan_id != plan_id or report.worker not in (plan.src.worker, plan.dst.worker):
            raise ValidationError(f"report for {plan_id!r}", [Issue(
                "worker", f"{report.worker!r} is not a side of transfer {plan_id!r}")])
        before, after = await self._change(plan_id, lambda r: self._with_report(r, report))
        if (before.state == "pending" and report.outcome == "ok"
                and report.worker == plan.initiator and plan.notify == "scheduler"):
            # A passive target gets the blocks it may reuse (it never saw the plan).
            blocks = plan.src_blocks if passive_target(plan) else None
            with contextlib.suppress(NotFoundError):
                await self.store.put_job(plan.target, TransferJob(
                    kind="complete", plan_id=plan_id, blocks=blocks,
                    epoch=plan.epoch_of(plan.target)))
        if before.state == "pending" and after.state != "pending":
            await self._ended(after, skip=report.worker)
        return after

    def _with_report(self, record: TransferRecord, report: TransferReport) -> TransferRecord:
        """``record`` with ``report`` added, and the state it leads to."""
        update: dict[str, object] = {"reports": (*record.reports, report)}
        if record.state == "pending" and report.outcome != "ok":
            update.update(state="failed", recompute=True,
                          error=report.error or report.outcome, finished_at=self._clock())
        elif record.state == "pending" and report.worker == record.plan.dst.worker:
            update.update(state="done", finished_at=self._clock())
        return record.model_copy(update=update)

    async def release(self, plan_id: str, worker: str) -> bool:
        """The destination's request that used a done transfer's KV ended: its blocks
        go back to the free list. True when they did (False: not done, released
        already, or the destination registered again since)."""
        record = await self.store.get_transfer(plan_id)
        plan = record.plan
        if worker != plan.dst.worker:
            raise ValidationError(f"release of {plan_id!r}", [Issue(
                "worker", f"{worker!r} is not the destination of transfer {plan_id!r}")])
        before, after = await self._change(plan_id, lambda r: r.model_copy(
            update={"dst_released": True})
            if r.state == "done" and not r.dst_released else None)
        if after is before:
            return False
        return await self.store.release_blocks(plan.dst.worker, plan.dst_blocks,
                                               epoch=plan.dst.epoch)

    async def _change(self, plan_id: str,
                      change: Callable[[TransferRecord], TransferRecord | None]
                      ) -> tuple[TransferRecord, TransferRecord]:
        """Apply ``change`` to the latest record by compare-and-set (again when another
        writer came first); the record before and after (the same object when ``change``
        answered None: nothing to do)."""
        for _ in range(MAX_CHANGE_TRIES):
            record, version = await self.store.read_transfer(plan_id)
            changed = change(record)
            if changed is None:
                return record, record
            if await self.store.replace_transfer(changed, version) is not None:
                return record, changed
        raise ConflictError(f"transfer {plan_id!r} changed {MAX_CHANGE_TRIES} times during "
                            "one update; retry")

    async def _end(self, plan_id: str, state: TransferState, reason: str,
                   skip: str | None) -> None:
        """End a pending transfer as ``state`` (failed or expired); nothing when it ended
        meanwhile."""
        before, after = await self._change(plan_id, lambda r: r.model_copy(update={
            "state": state, "recompute": True, "error": reason,
            "finished_at": self._clock()}) if r.state == "pending" else None)
        if before.state == "pending":
            await self._ended(after, skip=skip)

    async def _ended(self, record: TransferRecord, skip: str | None) -> None:
        """What follows the end of a transfer, done once by whoever ended it: blocks back
        (or quarantined), ``abort`` to a side still waiting, the listeners told."""
        plan = record.plan
        if record.src_blocks_taken:
            await self.store.release_blocks(plan.src.worker, plan.src_blocks,
                                            epoch=plan.src.epoch)
        if record.state != "done":
            # A hung initiator may still write into these blocks until the plan's
            # not_after (submission + deadline_s); hand them out again only after that,
            # plus slack for clock skew between hosts.
            await self.store.release_blocks_at(
                plan.dst.worker, plan.dst_blocks,
                record.created_at + plan.deadline_s + QUARANTINE_SLACK_S, epoch=plan.dst.epoch)
        if record.state == "failed" or (record.state == "expired" and passive_target(plan)):
            # expired: the sides that waited stopped long ago; a passive target waits
            # for nothing but is told, so that it may reuse the blocks being read.
            await self._abort(record, skip)
        for listener in self.listeners:
            try:
                await listener(record)
            except Exception:  # a listener must not undo the end of the transfer
                log.exception("transfer %s: end listener failed", plan.plan_id)

    async def _abort(self, record: TransferRecord, skip: str | None) -> None:
        plan = record.plan
        sides = {plan.target} if record.state == "expired" else {plan.src.worker,
                                                                 plan.dst.worker}
        for side in sorted(sides - {skip}):
            # A passive target never saw the plan: its abort carries it.
            carried = plan if side == plan.target and passive_target(plan) else None
            # A side that is gone has nobody waiting to be told.
            with contextlib.suppress(NotFoundError):
                await self.store.put_job(side, TransferJob(
                    kind="abort", plan_id=plan.plan_id, reason=record.error, plan=carried,
                    epoch=plan.epoch_of(side)))

    async def _fail_pending(self, name: str, reason: str) -> None:
        for record in await self.store.transfers_of(name):
            with contextlib.suppress(NotFoundError):
                await self._end(record.plan.plan_id, "failed", reason, skip=name)
