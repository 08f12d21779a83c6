"""What a run measured: latency percentiles, goodput under SLO, transfers by tier, cache hits.

TTFT runs from arrival to the first token the user sees — the end of the request's
first decode step, or of its last prefill step where it was prefilled on its decode
worker — so it includes queueing, prefill, the KV transfer and decode admission.
TPOT is a request's mean time between later tokens; ITL weighs every inter-token
interval alike (a request of ``n`` tokens counts ``n − 1`` times, as Dynamo's mocker
reports it). Prefix reuse is counted in blocks (``prefix_hit_ratio``, against the
trace's ideal) and in prompt tokens not computed (``reused_token_ratio``); with
prefix pulls, ``pulled_hit_ratio`` is the part of the hits that a prefill worker
copied from another worker's cache over the fabric (the rest were in its own cache).
Goodput counts requests that met both SLOs per second of the trace's arrival window
(the same denominator for every policy, so a run's drain time does not count against
it). The TTFT SLO grows with the prompt
(``ttft_base_s + ttft_per_1k_tokens_s × prompt / 1000``): a fixed TTFT target is
meaningless for traces whose prompts range from 1 k to 120 k tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sim.engines import Job
from topology.tiers import Tier

#: Edges (seconds) of the transfer-latency histogram bins, log-spaced 10 µs … 100 s.
HISTOGRAM_EDGES = tuple(float(x) for x in np.logspace(-5, 2, 29))

_FROZEN = ConfigDict(frozen=True)


class Slo(BaseModel):
    """Service-level objectives a request must meet to count as goodput."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ttft_base_s: float = Field(default=1.0, gt=0)
    ttft_per_1k_tokens_s: float = Field(default=0.25, ge=0)
    tpot_s: float = Field(default=0.1, gt=0)

    def ttft_target_s(self, prompt_tokens: int) -> float:
        """TTFT target of a prompt of ``prompt_tokens`` tokens."""
        return self.ttft_base_s + self.ttft_per_1k_tokens_s * prompt_tokens / 1000


class Percentiles(BaseModel):
    """p50 / p90 / p99 and the mean of one quantity (seconds); zeros when empty."""

    model_config = _FROZEN
    p50: float
    p90: float
    p99: float
    mean: float


class TierTransfers(BaseModel):
    """KV transfers of one fabric tier: count, bytes, latency and its histogram."""

    model_config = _FROZEN
    tier: str
    count: int
    bytes: int
    latency: Percentiles
    histogram: tuple[int, ...]


class Drops(BaseModel):
    """Requests that did not complete: larger than any instance's KV, or refused by the
    router on every retry."""

    model_config = _FROZEN
    too_big: int = 0
    gave_up: int = 0


class Summary(BaseModel):
    """Everything one simulated run reports."""

    model_config = _FROZEN
    requests: int
    completed: int
    dropped: int
    dropped_too_big: int = 0
    dropped_after_retries: int = 0
    duration_s: float
    ttft: Percentiles
    tpot: Percentiles
    itl: Percentiles = Percentiles(p50=0.0, p90=0.0, p99=0.0, mean=0.0)
    e2e: Percentiles
    goodput_rps: float
    slo_attainment: float
    throughput_rps: float
    transfers: tuple[TierTransfers, ...]
    bytes_moved: int
    bytes_no_uplink_share: float
    local_prefill_share: float
    prefix_hit_ratio: float
    #: Of ``prefix_hit_ratio``, the blocks copied from another worker (prefix pull).
    pulled_hit_ratio: float = 0.0
    #: Prefix copies by fabric tier (count, bytes, copy time), nearest tier first.
    pulls: tuple[TierTransfers, ...] = ()
    reused_token_ratio: float = 0.0
    decode_reuse_ratio: float
    ideal_hit_ratio: float
    gpu_utilisation: float
    prefill_utilisation: float
    decode_utilisation: float
    refusals: int
    split_in_aggregated: int = 0
    #: Prefix-index entries the router predicted at routing time (``prefill_ttl_s``).
    predicted_blocks: int = 0
    events: int
    wall_s: float


def percentiles(values: Sequence[float] | np.ndarray) -> Percentiles:
    """p50 / p90 / p99 / mean of ``values``."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Percentiles(p50=0.0, p90=0.0, p99=0.0, mean=0.0)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return Percentiles(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(data.mean()))


def histogram(values: Sequence[float]) -> tuple[int, ...]:
    """Counts per :data:`HISTOGRAM_EDGES` bin (values outside go to the end bins)."""
    clipped = np.clip(np.asarray(values, dtype=np.float64), HISTOGRAM_EDGES[0],
                      HISTOGRAM_EDGES[-1] * 0.999)
    counts, _ = np.histogram(clipped, bins=HISTOGRAM_EDGES)
    return tuple(int(c) for c in counts)


def _tpot(job: Job) -> float | None:
    if job.request.output_tokens <= 1:
        return None
    return (job.done_s - job.first_token_s) / (job.request.output_tokens - 1)


def transfers_by_tier(jobs: Sequence[Job], *, pulls: bool = False
                      ) -> tuple[TierTransfers, ...]:
    """Remote transfers (``pulls``: prefix copies) grouped by fabric tier, nearest first."""
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        tier = job.pull_tier if pulls else job.transfer_tier
        if (pulls or not job.local) and tier >= 0:
            groups.setdefault(tier, []).append(job)
    out = []
    for tier in sorted(groups):
        group = groups[tier]
        latencies = [j.pull_s if pulls else j.transfer_s for j in group]
        out.append(TierTransfers(tier=Tier(tier).label, count=len(group),
                                 bytes=sum(j.pull_bytes if pulls else j.transfer_bytes
                                           for j in group),
                                 latency=percentiles(latencies),
                                 histogram=histogram(latencies)))
    return tuple(out)


def _itl(jobs: Sequence[Job], tpots: Sequence[float | None]) -> Percentiles:
    """Inter-token latency over every interval (a request's mean, ``n − 1`` times)."""
    values = np.array([t for t in tpots if t is not None], dtype=np.float64)
    weights = np.array([j.request.output_tokens - 1 for j, t in zip(jobs, tpots, strict=True)
                        if t is not None], dtype=np.int64)
    if values.size == 0:
        return percentiles([])
    return percentiles(np.repeat(values, weights))


def met_slo(jobs: Sequence[Job], slo: Slo) -> int:
    """How many of ``jobs`` met both of ``slo``'s objectives."""
    good = 0
    for job in jobs:
        tpot = _tpot(job)
        good += (job.first_token_s - job.request.arrival_s
                 <= slo.ttft_target_s(job.request.prompt_tokens)
                 and (tpot is None or tpot <= slo.tpot_s))
    return good


def summarise(jobs: Sequence[Job], *, requests: int, drops: Drops, duration_s: float,
              arrival_span_s: float, slo: Slo, ideal_hit_ratio: float,
              utilisation: tuple[float, float, float], refusals: int, events: int,
              wall_s: float, split_in_aggregated: int = 0,
              predicted_blocks: int = 0) -> Summary:
    """The :class:`Summary` of the completed ``jobs`` of a run."""
    ttft = [j.first_token_s - j.request.arrival_s for j in jobs]
    tpots = [_tpot(j) for j in jobs]
    prompt_tokens = sum(j.request.prompt_tokens for j in jobs) or 1
    good = met_slo(jobs, slo)
    blocks = sum(len(j.request.block_hashes) for j in jobs) or 1
    tiers = transfers_by_tier(jobs)
    moved = sum(t.bytes for t in tiers)
    no_uplink = sum(t.bytes for t in tiers if Tier[t.tier.upper()] <= Tier.SAME_LEAF)
    span = max(duration_s, 1e-9)
    window = arrival_span_s if arrival_span_s > 0 else span
    return Summary(
        requests=requests, completed=len(jobs), dropped=drops.too_big + drops.gave_up,
        dropped_too_big=drops.too_big, dropped_after_retries=drops.gave_up,
        duration_s=duration_s, ttft=percentiles(ttft),
        tpot=percentiles([t for t in tpots if t is not None]), itl=_itl(jobs, tpots),
        e2e=percentiles([j.done_s - j.request.arrival_s for j in jobs]),
        goodput_rps=good / window, slo_attainment=good / max(requests, 1),
        throughput_rps=len(jobs) / span, transfers=tiers, bytes_moved=moved,
        bytes_no_uplink_share=no_uplink / moved if moved else 1.0,
        local_prefill_share=sum(j.local for j in jobs) / max(len(jobs), 1),
        prefix_hit_ratio=sum(j.prefill_cached for j in jobs) / blocks,
        pulled_hit_ratio=sum(j.pulled_blocks for j in jobs) / blocks,
        pulls=transfers_by_tier(jobs, pulls=True),
        reused_token_ratio=sum(j.prefill_cached_tokens for j in jobs) / prompt_tokens,
        decode_reuse_ratio=sum(j.decode_cached for j in jobs if not j.local) / blocks,
        ideal_hit_ratio=ideal_hit_ratio, gpu_utilisation=utilisation[0],
        prefill_utilisation=utilisation[1], decode_utilisation=utilisation[2],
        refusals=refusals, split_in_aggregated=split_in_aggregated,
        predicted_blocks=predicted_blocks, events=events,
        wall_s=wall_s)
