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

Figures between workers are precomputed once per worker set (:class:`PairTable`),
so a decision only indexes arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from policies.contracts import PairCosts
from policies.snapshot import CycleContext, FloatArray, IntArray, Worker
from topology.distance import DistanceModel
from topology.tiers import Tier


class CostParams(BaseModel):
    """Constants of the admission term at the decode worker.

    A decode worker takes a new request in at its next step; a step lasts longer the
    more requests it runs (``step_s_per_running`` each), and past its batch slots the
    request also waits ``admission_step_s`` per request ahead of it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    admission_step_s: float = Field(default=0.02, ge=0.0)
    step_s_per_running: float = Field(default=1e-4, ge=0.0)


class TtftTerms(BaseModel):
    """The estimate of one choice, term by term (seconds), and what moves."""

    model_config = ConfigDict(frozen=True)
    queue_s: float
    prefill_compute_s: float
    transfer_s: float
    admission_s: float
    total_s: float
    transfer_bytes: int
    tier: str
    bottleneck_gb_per_s: float | None
    links: tuple[str, ...]


class PairTable:
    """Tier, latency and bandwidth between the first GPUs of every pair of workers."""

    def __init__(self, distance: DistanceModel, workers: Sequence[Worker]) -> None:
        """Precompute the |workers|² figures (about 1 ms per 100 workers)."""
        self.distance = distance
        self.gpu = np.array([distance.index(w.gpus[0]) for w in workers], dtype=np.int64)
        count = np.array([len(w.gpus) for w in workers], dtype=np.int64)
        self.lanes = np.minimum.outer(count, count).astype(np.float64)
        n = len(workers)
        self.tier = np.empty((n, n), dtype=np.int64)
        self.latency_s = np.empty((n, n))
        self.bandwidth = np.empty((n, n))
        for i in range(n):
            tiers, lat_us, bw, _ = distance.costs_from(int(self.gpu[i]), self.gpu)
            self.tier[i], self.latency_s[i], self.bandwidth[i] = tiers, lat_us * 1e-6, bw
        self._links: dict[tuple[int, int], tuple[str, ...]] = {}

    @staticmethod
    def key(workers: Sequence[Worker]) -> tuple[tuple[str, ...], ...]:
        """What the table depends on: each worker's GPUs, in snapshot order."""
        return tuple(w.gpus for w in workers)

    def links(self, p: int, d: int) -> tuple[str, ...]:
        """Shared links on the path from worker ``p``'s first GPU to ``d``'s (memoised)."""
        found = self._links.get((p, d))
        if found is None:
            found = self.distance.path_links(int(self.gpu[p]), int(self.gpu[d]))
            self._links[(p, d)] = found
        return found


class FabricCostModel:
    """The router's :class:`~policies.contracts.PairCostModel` over a :class:`PairTable`."""

    def __init__(self, table: PairTable, params: CostParams | None = None) -> None:
        """Create the model for the snapshot the table was built for."""
        self.table = table
        self.params = params or CostParams()

    def _prefill_terms(self, ctx: CycleContext, pos: IntArray) -> tuple[FloatArray, FloatArray]:
        snap, request = ctx.snapshot, ctx.request
        rate = snap.prefill_rate[pos]
        uncached = np.maximum(request.prompt_tokens - ctx.cached[pos] * snap.block_tokens, 0)
        return snap.queued[pos] / rate, uncached / rate

    def _bytes_to_move(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        snap = ctx.snapshot
        tokens = np.maximum(ctx.request.prompt_tokens - ctx.cached[decode] * snap.block_tokens, 0)
        return (tokens * snap.kv_bytes_per_token).astype(np.float64)

    def admission(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """Wait at each decode worker: its current step, and a batch slot if it is full."""
        snap = ctx.snapshot
        running = snap.running[decode].astype(np.float64)
        over = np.maximum(running - snap.max_running[decode] + 1, 0)
        wait: FloatArray = (running * self.params.step_s_per_running
                            + over * self.params.admission_step_s)
        return wait

    def pair_costs(self, ctx: CycleContext, prefill: IntArray, decode: IntArray) -> PairCosts:
        """TTFT terms for every (prefill, decode) pair, links not shared."""
        queue, compute = self._prefill_terms(ctx, prefill)
        nbytes = self._bytes_to_move(ctx, decode)
        grid = np.ix_(prefill, decode)
        bandwidth = self.table.bandwidth[grid] * 1e9 * self.table.lanes[grid]
        transfer = np.where(nbytes > 0, self.table.latency_s[grid] + nbytes / bandwidth, 0.0)
        transfer[prefill[:, None] == decode[None, :]] = 0.0
        admission = self.admission(ctx, decode)
        total = (queue + compute)[:, None] + transfer + admission[None, :]
        return PairCosts(queue, compute, transfer, admission, total, self.table.tier[grid])

    def local_costs(self, ctx: CycleContext, decode: IntArray) -> FloatArray:
        """TTFT when each decode worker prefills what it lacks itself."""
        queue, compute = self._prefill_terms(ctx, decode)
        result: FloatArray = np.asarray(queue + compute + self.admission(ctx, decode),
                                        dtype=np.float64)
        return result

    def contended_total(self, ctx: CycleContext, prefill: int, decode: int) -> float:
        """TTFT of one pair with link capacity shared with the transfers in flight."""
        return self.terms(ctx, prefill, decode, local=prefill == decode).total_s

    def terms(self, ctx: CycleContext, prefill: int, decode: int, *, local: bool) -> TtftTerms:
        """The full estimate of one choice (``local``: ``decode`` prefills itself)."""
        p = np.array([decode if local else prefill], dtype=np.int64)
        d = np.array([decode], dtype=np.int64)
        queue, compute = (float(x[0]) for x in self._prefill_terms(ctx, p))
        admission = float(self.admission(ctx, d)[0])
        nbytes = 0 if local or prefill == decode else int(self._bytes_to_move(ctx, d)[0])
        transfer, bottleneck, links = self._transfer(ctx, prefill, decode, nbytes)
        tier = Tier(int(self.table.tier[int(p[0]), decode])).label
        return TtftTerms(queue_s=queue, prefill_compute_s=compute, transfer_s=transfer,
                         admission_s=admission, total_s=queue + compute + transfer + admission,
                         transfer_bytes=nbytes, tier=tier, bottleneck_gb_per_s=bottleneck,
                         links=links)

    def _transfer(self, ctx: CycleContext, p: int, d: int,
                  nbytes: int) -> tuple[float, float | None, tuple[str, ...]]:
        if nbytes <= 0:
            return 0.0, None, ()
        table, load = self.table, ctx.snapshot.link_load
        links = table.links(p, d)
        lanes = int(table.lanes[p, d])
        lane_bw = float(table.bandwidth[p, d])
        for link in links:
            share = table.distance.link_capacity_gb_per_s(link) / (load.get(link, 0) + 1)
            # a NIC carries one lane; an uplink carries every lane of the transfer at once
            lane_bw = min(lane_bw, share if link.startswith("nic:") else share / lanes)
        seconds = float(table.latency_s[p, d]) + nbytes / (lane_bw * 1e9 * lanes)
        return seconds, lane_bw, links
