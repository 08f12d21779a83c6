"""Request streams for the simulator: Mooncake and Azure traces, and an agentic generator.

* Mooncake FAST'25 JSONL (``timestamp`` ms, ``input_length``, ``output_length``,
  ``hash_ids``: chained 512-token block ids). The conversation trace's timestamps are
  quantised to ~3 s; :func:`load_mooncake` spreads each bucket's requests evenly over
  the bucket, with a seeded jitter, so replay is not a train of 3-second bursts.
* Azure LLM inference 2023 CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``): no
  prefix data, so every request gets block ids of its own.
* :func:`agentic`: sessions sharing a few long system prompts, multi-turn histories
  that grow turn by turn, and bursty session starts.

Block ids follow Mooncake's convention: an id names a block *and* all blocks before
it, so equal ids are reusable prefix KV.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from topology.errors import InputError, Location, ParseError
from topology.source import read_capture

#: Mooncake's block size in tokens.
MOONCAKE_BLOCK_TOKENS = 512
#: A fraction of distinct timestamps below this marks a trace as quantised.
_QUANTISED_BELOW = 0.5
_UNIQUE_BASE = 1 << 40


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request of a trace: arrival (s), lengths (tokens), block chain, session."""

    id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    block_hashes: tuple[int, ...]
    session: str | None = None


@dataclass(frozen=True)
class Trace:
    """A replayable request stream; ``has_prefix``: block ids carry real sharing."""

    name: str
    requests: tuple[SimRequest, ...]
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    has_prefix: bool = True

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival."""
        if not self.requests:
            return 0.0
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    def head(self, count: int) -> Trace:
        """The first ``count`` requests."""
        return replace(self, requests=self.requests[:count])

    def scaled(self, rate_scale: float) -> Trace:
        """The same requests arriving ``rate_scale`` times faster."""
        return replace(self, requests=tuple(
            replace(r, arrival_s=r.arrival_s / rate_scale) for r in self.requests),
            name=f"{self.name}x{rate_scale:g}")


def ideal_hit_ratio(trace: Trace) -> float:
    """Share of blocks an infinite cache would have seen before (block ids, in order)."""
    seen: set[int] = set()
    hits = total = 0
    for request in trace.requests:
        for block in request.block_hashes:
            hits += block in seen
            seen.add(block)
        total += len(request.block_hashes)
    return hits / total if total else 0.0


def without_sharing(trace: Trace) -> Trace:
    """The trace with every block id made unique (no prefix can ever be reused)."""
    out = []
    for i, request in enumerate(trace.requests):
        base = _UNIQUE_BASE + i * 4096
        out.append(replace(request, block_hashes=tuple(
            base + j for j in range(len(request.block_hashes)))))
    return replace(trace, requests=tuple(out), has_prefix=False, name=f"{trace.name}-unshared")


# --- Mooncake ----------------------------------------------------------------------------


def load_mooncake(path: str | Path, *, limit: int | None = None, spread: bool = True,
                  seed: int = 0) -> Trace:
    """Read a Mooncake JSONL trace; quantised timestamps are spread within their bucket."""
    text = read_capture(path)
    rows = [_mooncake_row(line, str(path), n)
            for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if limit is not None:
        rows = rows[:limit]
    times = [row[0] for row in rows]
    if spread:
        times = spread_quantised(times, seed)
    requests = tuple(
        SimRequest(f"r{i}", t, prompt, output, hashes)
        for i, (t, (_, prompt, output, hashes)) in enumerate(zip(times, rows, strict=True)))
    return Trace(Path(path).stem, _sorted(requests), MOONCAKE_BLOCK_TOKENS, True)


def _mooncake_row(line: str, source: str, n: int) -> tuple[float, int, int, tuple[int, ...]]:
    where = Location(source, n)
    wanted = "a JSON object with timestamp, input_length, output_length, hash_ids"
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ParseError(f"not JSON: {exc}", where, wanted) from exc
    if not isinstance(data, dict):
        raise ParseError(f"got {type(data).__name__}", where, wanted)
    stamp = _number(data, "timestamp", where)
    prompt = int(_number(data, "input_length", where))
    output = int(_number(data, "output_length", where))
    hashes = data.get("hash_ids")
    if not isinstance(hashes, list) or not all(isinstance(h, int) and h >= 0 for h in hashes):
        raise ParseError("hash_ids must be a list of non-negative integers",
                         Location(source, n, "hash_ids"), wanted)
    if prompt < 1 or output < 1:
        raise ParseError("input_length and output_length must be at least 1", where, wanted)
    return stamp / 1e3, prompt, output, tuple(hashes)


def _number(data: dict[str, object], key: str, where: Location) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ParseError(f"{key} must be a non-negative number, got {value!r}",
                         Location(where.source, where.line, key), "a number")
    return float(value)


def spread_quantised(times: Sequence[float], seed: int = 0) -> list[float]:
    """Spread requests sharing a quantised timestamp evenly over their bucket.

    A trace counts as quantised when fewer than half of its timestamps are distinct;
    the bucket width is the median gap between distinct timestamps. Request ``k`` of
    ``n`` in a bucket lands at ``(k + u) / n`` of the width, ``u`` seeded in [0, 1).
    """
    distinct = sorted(set(times))
    if len(times) < 2 or len(distinct) >= _QUANTISED_BELOW * len(times) or len(distinct) < 2:
        return list(times)
    gaps = sorted(b - a for a, b in itertools.pairwise(distinct))
    width = gaps[len(gaps) // 2]
    counts: dict[float, int] = {}
    for t in times:
        counts[t] = counts.get(t, 0) + 1
    rng, seen = random.Random(seed), dict.fromkeys(counts, 0)
    out = []
    for t in times:
        k = seen[t]
        seen[t] += 1
        out.append(t + (k + rng.random()) / counts[t] * width)
    return out


def _sorted(requests: Sequence[SimRequest]) -> tuple[SimRequest, ...]:
    return tuple(sorted(requests, key=lambda r: r.arrival_s))


# --- Azure ---------------------------------------------------------------------------------


def load_azure(path: str | Path, *, limit: int | None = None,
               block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> Trace:
    """Read an Azure LLM inference CSV; block ids are unique (the trace has no prefixes)."""
    source = str(path)
    reader = csv.reader(io.StringIO(read_capture(path)))
    header = next(reader, None)
    wanted = "TIMESTAMP,ContextTokens,GeneratedTokens"
    if header is None or [h.strip() for h in header] != wanted.split(","):
        raise ParseError(f"header is {header!r}", Location(source, 1), wanted)
    requests: list[SimRequest] = []
    start: datetime | None = None
    for n, row in enumerate(reader, start=2):
        if limit is not None and len(requests) >= limit:
            break
        stamp, prompt, output = _azure_row(row, source, n)
        start = start or stamp
        blocks = math.ceil(prompt / block_tokens)
        base = _UNIQUE_BASE + len(requests) * 4096
        requests.append(SimRequest(f"r{len(requests)}", (stamp - start).total_seconds(),
                                   prompt, output, tuple(range(base, base + blocks))))
    return Trace(Path(path).stem, _sorted(requests), block_tokens, False)


def _azure_row(row: list[str], source: str, n: int) -> tuple[datetime, int, int]:
    wanted = "TIMESTAMP,ContextTokens,GeneratedTokens"
    if len(row) != 3:
        raise ParseError(f"{len(row)} fields", Location(source, n), wanted)
    try:
        # Seven fractional digits: Python parses six, so the last one is dropped.
        text = row[0].strip()
        head, _, frac = text.partition(".")
        stamp = datetime.fromisoformat(f"{head}.{frac[:6]}" if frac else head)
        prompt, output = int(row[1]), int(row[2])
    except ValueError as exc:
        raise ParseError(str(exc), Location(source, n), wanted) from exc
    return stamp, max(prompt, 1), max(output, 1)


# --- agentic generator -------------------------------------------------------------------


@dataclass(frozen=True)
class AgenticParams:
    """Shape of the synthetic agentic workload (times in seconds, lengths in tokens).

    Sessions start as a Poisson stream whose rate jumps to ``burst_factor`` times the
    base during bursts (``burst_share`` of the time, bursts ``burst_s`` long). Each
    session uses one of ``system_prompts`` shared prompts and runs ``turns`` turns;
    every turn appends a user/tool message and the previous answer to the history.
    """

    sessions: int = 200
    session_rate: float = 2.0
    system_prompts: int = 4
    system_tokens: int = 6144
    turns: int = 6
    turn_tokens: int = 1024
    output_tokens: int = 256
    think_s: float = 1.5
    burst_factor: float = 5.0
    burst_share: float = 0.2
    burst_s: float = 10.0
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __post_init__(self) -> None:
        """Reject shapes that would break the block-count invariant."""
        if self.system_tokens % self.block_tokens or self.sessions < 1 or self.turns < 1:
            raise InputError("agentic workload: system_tokens must be a multiple of "
                             "block_tokens, and sessions and turns at least 1")


def agentic(params: AgenticParams | None = None, seed: int = 0) -> Trace:
    """Generate an agentic multi-turn trace (deterministic under ``seed``)."""
    p = params or AgenticParams()
    rng = random.Random(seed)
    starts = _bursty_starts(p, rng)
    requests: list[SimRequest] = []
    for s, start in enumerate(starts):
        requests.extend(_session(p, rng, s, start))
    ordered = _sorted(requests)
    return Trace("agentic", tuple(replace(r, id=f"r{i}") for i, r in enumerate(ordered)),
                 p.block_tokens, True)


def _bursty_starts(p: AgenticParams, rng: random.Random) -> list[float]:
    t, out = 0.0, list[float]()
    cycle = p.burst_s / p.burst_share
    while len(out) < p.sessions:
        bursting = (t % cycle) < p.burst_s
        rate = p.session_rate * (p.burst_factor if bursting else 1.0)
        t += rng.expovariate(rate)
        out.append(t)
    return out


def _session(p: AgenticParams, rng: random.Random, s: int, start: float) -> list[SimRequest]:
    system = rng.randrange(p.system_prompts)
    sys_blocks = p.system_tokens // p.block_tokens
    # Ids: system prompt blocks, then the session's own full history blocks; the
    # trailing partial block changes every turn, so it gets a fresh id each time.
    sys_ids = [1 + system * 1000 + j for j in range(sys_blocks)]
    history, t = 0, start
    out: list[SimRequest] = []
    for turn in range(p.turns):
        history += max(1, int(rng.expovariate(1.0 / p.turn_tokens)))
        prompt = p.system_tokens + history
        full, partial = divmod(history, p.block_tokens)
        own = [(s + 1) * 1_000_000 + j for j in range(full)]
        tail = [(s + 1) * 1_000_000 + 500_000 + turn] if partial else []
        output = max(1, int(rng.expovariate(1.0 / p.output_tokens)))
        out.append(SimRequest(f"s{s}t{turn}", t, prompt, output,
                              tuple(sys_ids + own + tail), session=f"s{s}"))
        history += output
        t += rng.expovariate(1.0 / p.think_s) + 0.05 * output
    return out
