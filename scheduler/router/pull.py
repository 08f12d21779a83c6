"""Prefix pull: a prefill worker copies a cached prefix from the worker holding it.

Mooncake's conductor does this (the trace's source): when the worker chosen for a
prefill lacks a prefix that another worker holds, the prefix's KV blocks are copied
to it over the fabric and only the rest of the prompt is computed. The copy pays
where it is faster than recomputing::

    saving(h → p) = compute(p lacks) − compute(p lacks after the copy) − pull(h → p)
    pull(h → p)   = overhead + latency + bytes / bandwidth   (the fabric path h → p,
                    its lanes; overhead: ``CostParams.pull_overhead_s``, the copy's own
                    fixed cost)

so a holder in the same rack is cheap and one across a TCP zone link rarely pays.
A holder serves only the blocks it has *valid*: the prefix index also lists blocks a
worker is still computing (engines announce a prefill when they schedule it) or
receiving, and a copy of those would wait for them. The router remembers the
prefixes it sent where and when it expects them valid
(:mod:`scheduler.router.underway`) and copies only the leading blocks before them.
Priced as a wait instead, a burst of requests on one new long prefix still went to
idle workers to copy it from the one computing it: each waited for that prefill, then
all copied at once over the same uplink, which no price made before the copies start
sees (long-context, ``bench/results/simulation.md``).
Holders are the ``pull_holders`` workers with the longest cached prefix of the
request (one partial selection over the prefix index's per-worker match, linear in
workers); each prefill candidate gets its cheapest holder (a holders × candidates
grid). :func:`pull_saving` re-prices one pull with link capacity shared with the
transfers in flight, as :meth:`FabricCostModel.contended_total` does for a pair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from policies.contracts import PullPlan
from policies.snapshot import CycleContext, FloatArray, IntArray

if TYPE_CHECKING:
    from scheduler.router.cost import FabricCostModel


def top_holders(cached: IntArray, k: int) -> IntArray:
    """Positions of the (up to) ``k`` workers holding the longest prefix (> 0 blocks),
    longest first, ties by position; linear in workers (a partial selection)."""
    if k <= 0 or len(cached) == 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(-cached, k - 1)[:k] if len(cached) > k else np.arange(len(cached))
    part = part[cached[part] > 0]
    order = np.lexsort((part, -cached[part]))
    result: IntArray = part[order].astype(np.int64, copy=False)
    return result


def _saved_s(ctx: CycleContext, prefill: IntArray, have: IntArray,
             after: IntArray) -> FloatArray:
    """Prefill seconds saved at each of ``prefill`` holding ``after`` leading blocks
    instead of ``have`` (broadcast)."""
    snap, tokens = ctx.snapshot, ctx.request.prompt_tokens
    bt = snap.block_tokens
    before = np.maximum(tokens - have * bt, 0)
    left = np.maximum(tokens - after * bt, 0)
    saved: FloatArray = (before - left) / snap.prefill_rate[prefill]
    return saved


def pull_plan(model: FabricCostModel, ctx: CycleContext, prefill: IntArray) -> PullPlan | None:
    """The cheapest pull for each prefill candidate (see the module docstring)."""
    if not model.params.prefix_pull or len(prefill) == 0:
        return None
    cached = ctx.cached
    holders = top_holders(cached, model.params.pull_holders)
    have = cached[prefill]
    if len(holders) == 0 or int(cached[holders[0]]) <= int(have.min()):
        return None
    snap = ctx.snapshot
    # what each holder can serve now: blocks under way there are not copied
    held = np.array([holder_valid(model, ctx, h) for h in holders.tolist()],
                    dtype=np.int64)[:, None]
    gain = np.maximum(held - have[None, :], 0)  # rows: holders, columns: candidates
    _, latency, bandwidth, lanes = model.table.figures(holders, prefill)
    nbytes = gain * float(snap.block_tokens * snap.kv_bytes_per_token)
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.where(gain > 0, model.params.pull_overhead_s + latency
                        + nbytes / (bandwidth * 1e9 * lanes), 0.0)
    saving = np.where(gain > 0, _saved_s(ctx, prefill, have[None, :], held) - pull, 0.0)
    best = saving.argmax(axis=0)
    cols = np.arange(len(prefill))
    best_saving = saving[best, cols]
    use = best_saving > 0
    return PullPlan(source=np.where(use, holders[best], -1).astype(np.int64),
                    blocks=np.where(use, held[best, 0], have).astype(np.int64),
                    pull_s=np.where(use, pull[best, cols], 0.0),
                    saving_s=np.where(use, best_saving, 0.0))


def holder_valid(model: FabricCostModel, ctx: CycleContext, holder: int) -> int:
    """Leading blocks of the request ``holder`` can serve now: its cached prefix, short
    of the blocks the router sent there to be computed or moved and expects valid
    later (:mod:`scheduler.router.underway`)."""
    under_way, held = model.under_way, int(ctx.cached[holder])
    if under_way is None:
        return held
    return under_way.valid(ctx.snapshot.workers[holder].id, ctx.request.block_hashes, held)


def pull_bytes(ctx: CycleContext, target: int, blocks: int) -> int:
    """Bytes a pull moves so that ``target`` holds ``blocks`` leading blocks."""
    snap = ctx.snapshot
    gain = max(blocks - int(ctx.cached[target]), 0)
    return gain * snap.block_tokens * snap.kv_bytes_per_token


def pull_seconds(model: FabricCostModel, ctx: CycleContext, source: int, target: int,
                 blocks: int) -> tuple[float, float | None, tuple[str, ...]]:
    """Time of one pull with link sharing (its fixed overhead included, when it moves
    anything), its bottleneck lane GB/s and its links."""
    nbytes = pull_bytes(ctx, target, blocks)
    seconds, bottleneck, links = model.link_transfer(ctx, source, target, nbytes)
    overhead = model.params.pull_overhead_s if nbytes > 0 else 0.0
    return seconds + overhead, bottleneck, links


def pull_saving(model: FabricCostModel, ctx: CycleContext, source: int, target: int,
                blocks: int) -> float:
    """:attr:`PullPlan.saving_s` of one pull, links shared with transfers in flight."""
    have = np.array([ctx.cached[target]], dtype=np.int64)
    saved = float(_saved_s(ctx, np.array([target], dtype=np.int64), have,
                           np.array([blocks], dtype=np.int64))[0])
    return saved - pull_seconds(model, ctx, source, target, blocks)[0]
