"""Serving engines: per-instance KV caches, chunked prefill and continuous-batching decode.

An :class:`Instance` is one engine over ``tp`` GPUs, stepping as vLLM's scheduler
does (:mod:`sim.timing`): each step carries a token of every running decode and,
within ``max_num_batched_tokens``, chunks of one or more queued prefills (FIFO; a
prefill starts once its KV blocks fit). A step with prefill chunks is one event;
a run of pure-decode steps is one *epoch* whose duration has a closed form, ending
at the next completion — or earlier, at the next step boundary, when new work
arrives. A million decode steps become a few events per request.

A request prefilled where it decodes (local prefill, aggregated serving) emits its
first token at the end of the step that finishes its prefill and then needs
``output − 1`` decode steps; a request whose KV arrives from a prefill worker emits
its first token at the end of its first decode step (as Dynamo's disaggregated
workers do).

:class:`KvCache` holds blocks by id with reference counts: blocks of running or
in-flight requests are pinned, the rest are an LRU prefix cache. A finished request
frees its blocks tail first (vLLM: the end of a chain is evicted before its shared
prefix) or parent first. Every change is reported to the real
:class:`~scheduler.prefix.PrefixIndex` as the same ``block_stored`` /
``block_removed`` events engines send through their sidecars.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from policies.snapshot import Role
from scheduler.prefix import BlockRemoved, BlockStored, PrefixIndex
from sim.clock import EventKind, EventQueue
from sim.timing import EngineTiming
from sim.workloads import SimRequest

#: Which of a finished request's blocks the LRU evicts first.
EvictionOrder = Literal["tail-first", "parent-first"]


class KvCache:
    """Block ids held by one instance: pinned (in use) or cached (LRU, evictable)."""

    def __init__(self, worker: str, capacity_blocks: int, index: PrefixIndex | None = None,
                 eviction: EvictionOrder = "tail-first") -> None:
        """An empty cache of ``capacity_blocks`` blocks reporting to ``index``."""
        self.worker = worker
        self.capacity = capacity_blocks
        self.index = index
        self.tail_first = eviction == "tail-first"
        self._refs: dict[int, int] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._private = 0
        self._seq = 0
        self.evicted = 0

    @property
    def pinned(self) -> int:
        """Blocks in use by requests (not evictable)."""
        return len(self._refs) - len(self._lru) + self._private

    @property
    def free(self) -> int:
        """Blocks a new request may take (free or evictable)."""
        return self.capacity - self.pinned

    def match(self, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` this cache holds."""
        refs, n = self._refs, 0
        for block in hashes:
            if block not in refs:
                break
            n += 1
        return n

    def fits(self, hashes: Sequence[int], extra: int = 0) -> bool:
        """Whether pinning ``hashes`` and ``extra`` private blocks fits the capacity."""
        refs, lru = self._refs, self._lru
        newly = sum(1 for b in hashes if b not in refs or b in lru)
        return self.pinned + newly + extra <= self.capacity

    def acquire(self, hashes: Sequence[int], extra: int = 0) -> None:
        """Pin ``hashes`` (storing the missing ones) and ``extra`` private blocks."""
        refs, lru, stored = self._refs, self._lru, []
        for block in hashes:
            count = refs.get(block)
            if count is None:
                refs[block] = 1
                stored.append(block)
            else:
                if count == 0:
                    del lru[block]
                refs[block] = count + 1
        self._private += extra
        removed = self._evict()
        if removed:
            self._emit(BlockRemoved, removed)
        if stored:
            self._emit(BlockStored, stored)

    def release(self, hashes: Sequence[int], extra: int = 0) -> None:
        """Unpin what :meth:`acquire` pinned; blocks stay cached until evicted (the
        chain's tail first, or its first block first: see ``eviction``)."""
        refs, lru = self._refs, self._lru
        for block in (reversed(hashes) if self.tail_first else hashes):
            count = refs[block] - 1
            refs[block] = count
            if count == 0:
                lru[block] = None
        self._private -= extra

    def _evict(self) -> list[int]:
        removed = []
        over = len(self._refs) + self._private - self.capacity
        while over > 0 and self._lru:
            block, _ = self._lru.popitem(last=False)
            del self._refs[block]
            removed.append(block)
            over -= 1
        self.evicted += len(removed)
        return removed

    def _emit(self, kind: type[BlockStored] | type[BlockRemoved], blocks: list[int]) -> None:
        if self.index is None:
            return
        self._seq += 1
        # Built without re-validation: ids are trusted ints from the trace.
        event = kind.model_construct(worker=self.worker, seq=self._seq,
                                     block_hashes=tuple(blocks), tier="gpu", model=None)
        self.index.apply(event)


@dataclass(slots=True)
class Job:
    """A request on its way through the cluster, with the times the metrics need."""

    request: SimRequest
    prefill: str = ""
    decode: str = ""
    local: bool = False
    routed_s: float = 0.0
    prefill_start_s: float = -1.0
    prefill_end_s: float = -1.0
    kv_ready_s: float = -1.0
    first_token_s: float = -1.0
    done_s: float = -1.0
    prefill_cached: int = 0
    prefill_cached_tokens: int = 0
    decode_cached: int = 0
    transfer_bytes: int = 0
    transfer_tier: int = -1
    transfer_s: float = 0.0
    decode_blocks: int = 0
    finish_step: int = 0
    attempts: int = 0
    queued_tokens: int = 0
    #: KV blocks its route reservation promises the decode worker until they are taken.
    promised_blocks: int = 0
    #: Prefix pull: leading blocks pinned on the prefill worker since the copy landed
    #: (released when the prefill starts), the blocks the copy added there (counted as
    #: pulled hits), its bytes, fabric tier and seconds.
    pull_pinned: int = 0
    pull_source: str = ""
    pulled_blocks: int = 0
    pull_bytes: int = 0
    pull_tier: int = -1
    pull_s: float = 0.0


@dataclass(slots=True)
class _Prefill:
    """A prefill under way: its KV is allocated, ``remaining`` tokens still to compute
    after ``context`` computed (or cached) ones."""

    job: Job
    remaining: int
    context: int
    extra: int = 0


@dataclass(slots=True)
class StepResult:
    """What a step or an epoch finished: decodes done, prefills done elsewhere's KV."""

    done: list[Job] = field(default_factory=list)
    prefilled: list[Job] = field(default_factory=list)


class Busy(Enum):
    """What an instance's GPU is doing."""

    IDLE = 0
    STEP = 1
    DECODE = 2


class Instance:
    """One serving engine: prefill queue, decode batch, KV cache and its GPU."""

    def __init__(self, worker_id: str, role: Role, gpus: tuple[str, ...],
                 timing: EngineTiming, cache: KvCache, block_tokens: int,
                 queue: EventQueue) -> None:
        """Create an idle instance scheduling its events on ``queue``."""
        self.id, self.role, self.gpus = worker_id, role, gpus
        self.timing, self.cache, self.block_tokens = timing, cache, block_tokens
        self.capacity_tokens = cache.capacity * block_tokens
        self.queue = queue
        self.prefills: deque[Job] = deque()
        self.chunking: list[_Prefill] = []
        self.queued_tokens = 0
        self.waiting: deque[Job] = deque()
        self.alloc_wait: deque[Job] = deque()
        self.running: list[tuple[int, int, Job]] = []
        self.incoming = 0
        #: KV blocks promised to remote prefills routed here and not taken yet, as the
        #: live router's load reservations hold them (``api.load.reservations_for``).
        self.promised_blocks = 0
        #: Blocks held but not valid yet (being computed here, or a transfer still
        #: writing them), with how many jobs hold them so: a pull copies valid ones only.
        self.pending: dict[int, int] = {}
        self.track_pending = False  # on where pulls read it (SimConfig.prefix_pull)
        #: Prefix copies from here waiting for blocks of :attr:`pending` (simulator's).
        self.pull_waiting: list[Any] = []
        self.steps = 0
        self.ctx_sum = 0
        self.busy = Busy.IDLE
        self.busy_s = 0.0
        self._since = 0.0
        self._token = 0
        self._admitted = 0  # tie-break of the running heap: admission order, not id()
        self._step: tuple[list[tuple[_Prefill, int]], int] = ([], 0)
        self._epoch: tuple[float, int, int, int] = (0.0, 0, 0, 0)

    # -- what the router sees -----------------------------------------------------------
    @property
    def load_requests(self) -> int:
        """Requests this instance carries: queued prefills, or decodes assigned to it."""
        if self.role is Role.PREFILL:
            return len(self.prefills) + len(self.chunking)
        return (len(self.running) + len(self.waiting) + self.incoming + len(self.prefills)
                + len(self.chunking))

    # -- prefill ------------------------------------------------------------------------
    def enqueue_prefill(self, job: Job) -> None:
        """Queue a prefill (FIFO) and start it at the next step if its KV fits."""
        self.prefills.append(job)
        # What the prefill will compute, as far as the cache tells now (corrected when
        # it starts): a real engine's queue holds work, not prompt length.
        job.queued_tokens = job.request.prompt_tokens - self._reused_tokens(job.request)
        self.queued_tokens += job.queued_tokens
        self.kick()

    def _reused_tokens(self, request: SimRequest) -> int:
        """Prompt tokens a prefill starting now would take from the cache: whole cached
        blocks, the last prompt token always computed (vLLM)."""
        cached = self.cache.match(request.block_hashes)
        return min(cached, (request.prompt_tokens - 1) // self.block_tokens) * self.block_tokens

    def _output_blocks(self, request: SimRequest) -> int:
        total = math.ceil((request.prompt_tokens + request.output_tokens) / self.block_tokens)
        return max(total - len(request.block_hashes), 0)

    def _head_fits(self) -> bool:
        job = self.prefills[0]
        extra = self._output_blocks(job.request) if job.local else 0
        return self.cache.fits(job.request.block_hashes, extra)

    def valid_prefix(self, hashes: Sequence[int]) -> int:
        """Leading blocks of ``hashes`` held here and already computed or landed."""
        n, pending = self.cache.match(hashes), self.pending
        if pending:
            for i in range(n):
                if hashes[i] in pending:
                    return i
        return n

    def _mark(self, hashes: Sequence[int], step: int) -> None:
        if not self.track_pending:
            return
        pending = self.pending
        for block in hashes:
            count = pending.get(block, 0) + step
            if count > 0:
                pending[block] = count
            else:
                pending.pop(block, None)

    def _start_prefill(self, now: float) -> _Prefill:
        job = self.prefills.popleft()
        request = job.request
        extra = self._output_blocks(request) if job.local else 0
        cached = self.cache.match(request.block_hashes)
        tokens = self._reused_tokens(request)
        self.cache.acquire(request.block_hashes, extra)
        self._mark(request.block_hashes[cached:], 1)
        if job.pull_pinned:  # the pulled prefix, pinned since it landed, is in use now
            self.cache.release(request.block_hashes[:job.pull_pinned])
            job.pull_pinned = 0
        job.prefill_cached, job.prefill_cached_tokens = cached, tokens
        self.queued_tokens += request.prompt_tokens - tokens - job.queued_tokens
        job.prefill_start_s = now
        if job.local:
            job.decode_cached, job.decode_blocks = cached, extra
        entry = _Prefill(job, request.prompt_tokens - tokens, tokens, extra)
        self.chunking.append(entry)
        return entry

    def _chunks(self, now: float) -> list[tuple[_Prefill, int]]:
        """The prefill chunks of the next step (starting queued prefills that fit)."""
        limit = self.timing.max_num_batched_tokens
        if limit is None:  # no chunking: one whole prompt per step
            if not self.chunking and self.prefills and self._head_fits():
                self._start_prefill(now)
            return [(self.chunking[0], self.chunking[0].remaining)] if self.chunking else []
        budget = limit - len(self.running)
        out: list[tuple[_Prefill, int]] = []
        for entry in self.chunking:
            if budget <= 0:
                return out
            n = min(entry.remaining, budget)
            out.append((entry, n))
            budget -= n
        seqs = len(self.running) + len(self.chunking)
        while (budget > 0 and self.prefills and seqs < self.timing.max_num_seqs
               and self._head_fits()):
            entry = self._start_prefill(now)
            n = min(entry.remaining, budget)
            out.append((entry, n))
            budget, seqs = budget - n, seqs + 1
        return out

    # -- decode -------------------------------------------------------------------------
    def try_reserve(self, job: Job) -> bool:
        """Pin the KV blocks a remote prefill will write here; False: not enough room."""
        request = job.request
        extra = self._output_blocks(request)
        if not self.cache.fits(request.block_hashes, extra):
            return False
        job.decode_cached = self.cache.match(request.block_hashes)
        self.cache.acquire(request.block_hashes, extra)
        self._mark(request.block_hashes[job.decode_cached:], 1)
        job.decode_blocks = extra
        self.promised_blocks -= job.promised_blocks  # taken now: out of the free count
        job.promised_blocks = 0
        return True

    def add_decode(self, job: Job) -> None:
        """The KV of ``job`` is here: it joins the batch at the next step boundary."""
        self._mark(job.request.block_hashes[job.decode_cached:], -1)
        self.waiting.append(job)
        self.kick()

    def release_prefill_side(self, job: Job) -> None:
        """A remote transfer finished: unpin the prompt blocks on this prefill instance."""
        self.cache.release(job.request.block_hashes)
        self.kick()

    def _admit(self) -> None:
        """Waiting decodes join the batch (first token at the end of their first step)."""
        limit = self.timing.max_num_seqs - len(self.chunking)
        while self.waiting and len(self.running) < limit:
            job = self.waiting.popleft()
            self.incoming -= 1
            self._join(job, job.request.output_tokens, job.request.prompt_tokens)
            job.first_token_s = -2.0  # set once the first step's end is known

    def _join(self, job: Job, steps: int, context: int) -> None:
        job.finish_step = self.steps + steps
        self.ctx_sum += context
        self._admitted += 1
        heapq.heappush(self.running, (job.finish_step, self._admitted, job))

    def _finish(self, now: float, result: StepResult) -> None:
        """Pop the requests whose last step has run."""
        while self.running and self.running[0][0] <= self.steps:
            _, _, job = heapq.heappop(self.running)
            self._done(job, now, result)

    def _done(self, job: Job, now: float, result: StepResult) -> None:
        job.done_s = now
        request = job.request
        self.ctx_sum -= request.prompt_tokens + request.output_tokens
        self.cache.release(request.block_hashes, job.decode_blocks)
        result.done.append(job)

    # -- steps ----------------------------------------------------------------------------
    def kick(self) -> None:
        """Plan the next step, or cut the current epoch at the next step boundary."""
        now = self.queue.now()
        if self.busy is Busy.DECODE:
            if self.waiting or (self.prefills and self._head_fits()):
                self._interrupt(now)
            return
        if self.busy is Busy.STEP:
            return
        self._admit()
        chunks = self._chunks(now)
        if chunks:
            batch = len(self.running)
            ms = self.timing.step_ms([(n, e.context) for e, n in chunks], batch,
                                     self.ctx_sum, self.capacity_tokens)
            self._step = (chunks, batch)
            self._token += 1
            self._set_busy(Busy.STEP, now)
            self.queue.schedule(now + ms / 1e3, EventKind.STEP_END, (self, self._token))
        elif self.running:
            self._start_epoch(now)

    def end_step(self, token: int) -> StepResult:
        """A step with prefill chunks ended: decodes advance a token, chunks complete."""
        result = StepResult()
        if token != self._token or self.busy is not Busy.STEP:
            return result
        now = self.queue.now()
        chunks, batch = self._step
        if batch:
            self._first_tokens(now)
            self.steps += 1
            self.ctx_sum += batch
            self._finish(now, result)
        for entry, n in chunks:
            entry.remaining -= n
            entry.context += n
            self.queued_tokens -= n
            if entry.remaining == 0:
                self._prefilled(entry, now, result)
        self._set_busy(Busy.IDLE, now)
        self.kick()
        return result

    def _prefilled(self, entry: _Prefill, now: float, result: StepResult) -> None:
        job = entry.job
        self.chunking.remove(entry)
        job.prefill_end_s = now
        self._mark(job.request.block_hashes[job.prefill_cached:], -1)
        if not job.local:
            result.prefilled.append(job)
            return
        job.kv_ready_s = job.first_token_s = now  # the prefill step samples the first token
        if job.request.output_tokens <= 1:
            self.ctx_sum += job.request.prompt_tokens + job.request.output_tokens
            self._done(job, now, result)
        else:
            self._join(job, job.request.output_tokens - 1, job.request.prompt_tokens + 1)

    def _first_tokens(self, now: float) -> None:
        for _, _, job in self.running:
            if job.first_token_s == -2.0:
                job.first_token_s = now

    def _start_epoch(self, now: float) -> None:
        batch = len(self.running)
        first = self.timing.decode_run_ms(1, batch, self.ctx_sum, self.capacity_tokens)
        for _, _, job in self.running:
            if job.first_token_s == -2.0:
                job.first_token_s = now + first / 1e3
        steps = self.running[0][0] - self.steps
        self._epoch = (now, batch, self.ctx_sum, steps)
        self._token += 1
        self._set_busy(Busy.DECODE, now)
        self.queue.schedule(now + self._epoch_ms(steps) / 1e3, EventKind.EPOCH_END,
                            (self, self._token))

    def _epoch_ms(self, steps: int) -> float:
        _, batch, active, _ = self._epoch
        return self.timing.decode_run_ms(steps, batch, active, self.capacity_tokens)

    def _interrupt(self, now: float) -> None:
        start, _, _, planned = self._epoch
        elapsed = (now - start) * 1e3
        low, high = 1, planned  # the first step count whose end is not before now
        while low < high:
            mid = (low + high) // 2
            if self._epoch_ms(mid) >= elapsed:
                high = mid
            else:
                low = mid + 1
        if low >= planned:
            return
        self._epoch = (*self._epoch[:3], low)
        self._token += 1
        self.queue.schedule(start + self._epoch_ms(low) / 1e3, EventKind.EPOCH_END,
                            (self, self._token))

    def end_epoch(self, token: int) -> StepResult:
        """An epoch's last step ended; returns the requests that finished (stale: none)."""
        result = StepResult()
        if token != self._token or self.busy is not Busy.DECODE:
            return result
        now = self.queue.now()
        _, batch, _, steps = self._epoch
        self.steps += steps
        self.ctx_sum += batch * steps
        self._finish(now, result)
        self._set_busy(Busy.IDLE, now)
        self.kick()
        return result

    def _set_busy(self, state: Busy, now: float) -> None:
        if self.busy is not Busy.IDLE:
            self.busy_s += now - self._since
        self.busy, self._since = state, now

    def utilisation(self, horizon_s: float) -> float:
        """Share of ``horizon_s`` the GPU was busy (an ongoing piece counts up to now)."""
        busy = self.busy_s
        if self.busy is not Busy.IDLE:
            busy += self.queue.now() - self._since
        return busy / horizon_s if horizon_s > 0 else 0.0
