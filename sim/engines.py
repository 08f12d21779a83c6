"""Serving engines: per-instance KV caches, prefill queues and continuous-batching decode.

An :class:`Instance` is one engine over ``tp`` GPUs. Its GPU runs one thing at a
time: a prefill (from its FIFO queue, timed by the capacity model for the tokens
its cache lacks) or a *decode epoch*. Continuous batching is simulated epoch by
epoch instead of step by step: between two batch changes the step time is
``base + per_seq·B + per_token·ΣC`` with every context growing by one token per
step, so the time of ``n`` steps has a closed form and an epoch ends at the next
completion — or earlier, at the next step boundary, when new work arrives. A
million decode steps become a few events per request.

:class:`KvCache` holds blocks by id with reference counts: blocks of running or
in-flight requests are pinned, the rest are an LRU prefix cache. Every change is
reported to the real :class:`~scheduler.prefix.PrefixIndex` as the same
``block_stored`` / ``block_removed`` events engines send through their sidecars.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from policies.snapshot import Role
from scheduler.capacity import InstanceProfile
from scheduler.prefix import BlockRemoved, BlockStored, PrefixIndex
from sim.clock import EventKind, EventQueue
from sim.workloads import SimRequest


class KvCache:
    """Block ids held by one instance: pinned (in use) or cached (LRU, evictable)."""

    def __init__(self, worker: str, capacity_blocks: int,
                 index: PrefixIndex | None = None) -> None:
        """An empty cache of ``capacity_blocks`` blocks reporting to ``index``."""
        self.worker = worker
        self.capacity = capacity_blocks
        self.index = index
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
        """Unpin what :meth:`acquire` pinned; blocks stay cached until evicted."""
        refs, lru = self._refs, self._lru
        for block in hashes:
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
    decode_cached: int = 0
    transfer_bytes: int = 0
    transfer_tier: int = -1
    transfer_s: float = 0.0
    decode_blocks: int = 0
    finish_step: int = 0
    attempts: int = 0


class Busy(Enum):
    """What an instance's GPU is doing."""

    IDLE = 0
    PREFILL = 1
    DECODE = 2


class Instance:
    """One serving engine: prefill queue, decode batch, KV cache and its GPU."""

    def __init__(self, worker_id: str, role: Role, gpus: tuple[str, ...],
                 profile: InstanceProfile, cache: KvCache, block_tokens: int,
                 queue: EventQueue) -> None:
        """Create an idle instance scheduling its events on ``queue``."""
        self.id, self.role, self.gpus = worker_id, role, gpus
        self.profile, self.cache, self.block_tokens = profile, cache, block_tokens
        self.queue = queue
        self.prefills: deque[Job] = deque()
        self.queued_tokens = 0
        self.waiting: deque[Job] = deque()
        self.alloc_wait: deque[Job] = deque()
        self.running: list[tuple[int, int, Job]] = []
        self.incoming = 0
        self.steps = 0
        self.ctx_sum = 0
        self.busy = Busy.IDLE
        self.busy_s = 0.0
        self._since = 0.0
        self._token = 0
        self._admitted = 0  # tie-break of the running heap: admission order, not id()
        self._epoch: tuple[float, int, float, float, int] = (0.0, 0, 0.0, 0.0, 0)

    # -- what the router sees -----------------------------------------------------------
    @property
    def load_requests(self) -> int:
        """Requests this instance carries: queued prefills, or decodes assigned to it."""
        if self.role is Role.PREFILL:
            return len(self.prefills)
        return len(self.running) + len(self.waiting) + self.incoming + len(self.prefills)

    # -- prefill ------------------------------------------------------------------------
    def enqueue_prefill(self, job: Job) -> None:
        """Queue a prefill (FIFO) and start it if the GPU is free."""
        self.prefills.append(job)
        self.queued_tokens += job.request.prompt_tokens
        self.kick()

    def _start_prefill(self, now: float) -> bool:
        job = self.prefills[0]
        request = job.request
        extra = self._output_blocks(request) if job.local else 0
        if not self.cache.fits(request.block_hashes, extra):
            return False
        self.prefills.popleft()
        cached = self.cache.match(request.block_hashes)
        self.cache.acquire(request.block_hashes, extra)
        job.prefill_cached, job.prefill_start_s = cached, now
        if job.local:
            job.decode_cached, job.decode_blocks = cached, extra
        context = min(cached * self.block_tokens, request.prompt_tokens - 1)
        seconds = self.profile.prefill_ms(request.prompt_tokens - context, context) / 1e3
        self._set_busy(Busy.PREFILL, now)
        self.queue.schedule(now + seconds, EventKind.PREFILL_DONE, (self, job))
        return True

    def finish_prefill(self, job: Job) -> None:
        """The prefill of ``job`` completed: free the GPU (the caller moves the KV)."""
        now = self.queue.now()
        self.queued_tokens -= job.request.prompt_tokens
        job.prefill_end_s = now
        self._set_busy(Busy.IDLE, now)

    def _output_blocks(self, request: SimRequest) -> int:
        total = math.ceil((request.prompt_tokens + request.output_tokens) / self.block_tokens)
        return max(total - len(request.block_hashes), 0)

    # -- decode -------------------------------------------------------------------------
    def try_reserve(self, job: Job) -> bool:
        """Pin the KV blocks a remote prefill will write here; False: not enough room."""
        request = job.request
        extra = self._output_blocks(request)
        if not self.cache.fits(request.block_hashes, extra):
            return False
        job.decode_cached = self.cache.match(request.block_hashes)
        self.cache.acquire(request.block_hashes, extra)
        job.decode_blocks = extra
        return True

    def add_decode(self, job: Job) -> None:
        """The KV of ``job`` is here: it joins the batch at the next step boundary."""
        self.waiting.append(job)
        self.kick()

    def release_prefill_side(self, job: Job) -> None:
        """A remote transfer finished: unpin the prompt blocks on this prefill instance."""
        self.cache.release(job.request.block_hashes)
        self.kick()

    def end_epoch(self, token: int) -> list[Job]:
        """An epoch's last step ended; returns the requests that finished (stale: none)."""
        if token != self._token or self.busy is not Busy.DECODE:
            return []
        now = self.queue.now()
        _, batch, _, _, steps = self._epoch
        self.steps += steps
        self.ctx_sum += batch * steps
        finished = []
        while self.running and self.running[0][0] <= self.steps:
            _, _, job = heapq.heappop(self.running)
            job.done_s = now
            self.ctx_sum -= job.request.prompt_tokens + job.request.output_tokens
            self.cache.release(job.request.block_hashes, job.decode_blocks)
            finished.append(job)
        self._set_busy(Busy.IDLE, now)
        self.kick()
        return finished

    # -- the GPU ------------------------------------------------------------------------
    def kick(self) -> None:
        """Start the next piece of work, or cut the current epoch at the next step."""
        now = self.queue.now()
        if self.busy is Busy.DECODE:
            if self.waiting or self._prefill_ready():
                self._interrupt(now)
            return
        if self.busy is Busy.PREFILL:
            return
        if self.prefills and self._start_prefill(now):
            return
        if self.waiting or self.running:
            self._start_epoch(now)

    def _prefill_ready(self) -> bool:
        if not self.prefills:
            return False
        job = self.prefills[0]
        extra = self._output_blocks(job.request) if job.local else 0
        return self.cache.fits(job.request.block_hashes, extra)

    def _start_epoch(self, now: float) -> None:
        limit = self.profile.max_batch
        while self.waiting and len(self.running) < limit:
            job = self.waiting.popleft()
            self.incoming -= 0 if job.local else 1
            job.finish_step = self.steps + job.request.output_tokens
            self.ctx_sum += job.request.prompt_tokens
            self._admitted += 1
            heapq.heappush(self.running, (job.finish_step, self._admitted, job))
            job.first_token_s = -2.0  # set below once the first step's time is known
        batch = len(self.running)
        d = self.profile.decode
        first = d.base_ms + d.per_seq_ms * batch + d.per_token_ms * self.ctx_sum
        for _, _, job in self.running:
            if job.first_token_s == -2.0:
                job.first_token_s = now + first / 1e3
        steps = self.running[0][0] - self.steps
        self._epoch = (now, batch, first, d.per_token_ms * batch / 2.0, steps)
        self._token += 1
        self._set_busy(Busy.DECODE, now)
        self.queue.schedule(now + self._epoch_ms(steps) / 1e3, EventKind.EPOCH_END,
                            (self, self._token))

    def _epoch_ms(self, steps: int) -> float:
        _, _, first, half, _ = self._epoch
        return first * steps + half * steps * (steps - 1)

    def _interrupt(self, now: float) -> None:
        start, batch, first, half, planned = self._epoch
        elapsed = (now - start) * 1e3
        lin = first - half
        n = (math.ceil((-lin + math.sqrt(lin * lin + 4 * half * elapsed)) / (2 * half))
             if half > 0 else math.ceil(elapsed / first))
        n = max(1, n)
        while n > 1 and self._epoch_ms(n - 1) >= elapsed:
            n -= 1
        if n >= planned:
            return
        self._epoch = (start, batch, first, half, n)
        self._token += 1
        self.queue.schedule(start + self._epoch_ms(n) / 1e3, EventKind.EPOCH_END,
                            (self, self._token))

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
