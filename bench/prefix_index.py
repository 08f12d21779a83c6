"""Benchmark: the KV prefix index on the Mooncake conversation trace, next to Dynamo's
Rust radix tree and a plain-dict baseline.

Run: ``.venv/bin/python bench/prefix_index.py [--requests N] [--queries 2000]``
(``--out DIR``, default ``bench/results``).

Writes ``bench/results/prefix_index.json`` and ``prefix_index.md``.

Stream. Each trace request (``hash_ids``: chained ids of 512-token blocks) is routed
to worker ``hash_ids[1] % N`` (``hash_ids[0]`` for one-block requests). Every request
of the conversation trace starts with the same block 0, so the second block is the
first one that tells conversations apart: turns of one conversation land on the same
worker, as a prefix-affine router would send them. Each worker is an LRU cache of
``ceil(0.5 * unique_blocks / N)`` blocks (half the trace's unique blocks fit in the
cluster), refreshed leaf-first so evictions take the ends of chains; each request
emits one ``BlockStored`` (the blocks the worker lacked, with their parent) and,
when the cache overflows, one ``BlockRemoved``. The same events drive every
implementation. Lookups: ``--queries`` requests sampled evenly from the trace, each
matched against all N workers on the final state; the results of the two indexes
are compared request by request.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import platform
import sys
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scheduler.prefix.events import BlockRemoved, BlockStored  # noqa: E402
from scheduler.prefix.index import PrefixIndex  # noqa: E402
from sim.scenarios import default_trace_dir  # noqa: E402

TRACE = default_trace_dir() / "mooncake" / "conversation_trace.jsonl"
WORKER_COUNTS = (64, 256, 1024)


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[prefix-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RawEvent:
    """One event of the generated stream, independent of any implementation."""

    worker: int
    seq: int
    stored: bool
    hashes: tuple[int, ...]
    parent: int | None


def load_trace(path: Path, limit: int | None) -> list[list[int]]:
    """The ``hash_ids`` of the first ``limit`` requests (all when ``None``)."""
    chains: list[list[int]] = []
    with path.open() as handle:
        for line in handle:
            if limit is not None and len(chains) >= limit:
                break
            chains.append(json.loads(line)["hash_ids"])
    return chains


def route(chain: Sequence[int], workers: int) -> int:
    """Prefix-affine routing on the first block that differs between conversations."""
    return (chain[1] if len(chain) > 1 else chain[0]) % workers


def build_stream(chains: list[list[int]], workers: int, capacity: int) -> list[RawEvent]:
    """Simulate N LRU worker caches and emit their stored / removed events."""
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(workers)]
    seqs = [0] * workers
    events: list[RawEvent] = []
    for chain in chains:
        w = route(chain, workers)
        cache = caches[w]
        held = 0
        while held < len(chain) and chain[held] in cache:
            held += 1
        if held < len(chain):
            parent = chain[held - 1] if held else None
            events.append(RawEvent(w, seqs[w], True, tuple(chain[held:]), parent))
            seqs[w] += 1
        for h in reversed(chain):
            cache[h] = None
            cache.move_to_end(h)
        evicted = []
        while len(cache) > capacity:
            evicted.append(cache.popitem(last=False)[0])
        if evicted:
            events.append(RawEvent(w, seqs[w], False, tuple(evicted), None))
            seqs[w] += 1
    return events


def ours_events(stream: list[RawEvent]) -> list[BlockStored | BlockRemoved]:
    """The stream as validated toposched events."""
    return [BlockStored(worker=f"w{e.worker}", seq=e.seq, block_hashes=e.hashes,
                        parent_hash=e.parent) if e.stored else
            BlockRemoved(worker=f"w{e.worker}", seq=e.seq, block_hashes=e.hashes)
            for e in stream]


def ours_json(stream: list[RawEvent]) -> list[bytes]:
    """The stream as toposched wire JSON (for the parse + apply measurement)."""
    return [event.model_dump_json().encode() for event in ours_events(stream)]


def dynamo_json(stream: list[RawEvent]) -> list[tuple[int, bytes]]:
    """The stream as Dynamo ``KvCacheEvent`` JSON (block hash = tokens hash = trace id)."""
    out = []
    for e in stream:
        if e.stored:
            data: dict[str, Any] = {"stored": {"parent_hash": e.parent, "blocks": [
                {"block_hash": h, "tokens_hash": h} for h in e.hashes]}}
        else:
            data = {"removed": {"block_hashes": list(e.hashes)}}
        out.append((e.worker, json.dumps({"event_id": e.seq, "data": data}).encode()))
    return out


class DictBaseline:
    """Reference point: dict block → set of worker ids, prefix walk by set intersection."""

    def __init__(self, workers: int) -> None:
        self.owners: dict[int, set[int]] = {}
        self.workers = list(range(workers))

    def apply(self, e: RawEvent) -> None:
        if e.stored:
            for h in e.hashes:
                self.owners.setdefault(h, set()).add(e.worker)
            return
        for h in e.hashes:
            owners = self.owners.get(h)
            if owners is not None:
                owners.discard(e.worker)
                if not owners:
                    del self.owners[h]

    def match(self, chain: Sequence[int]) -> dict[int, int]:
        lengths: dict[int, int] = {}
        alive = set(self.owners.get(chain[0], ()))
        for pos in range(1, len(chain)):
            nxt = alive & self.owners.get(chain[pos], set())
            for w in alive - nxt:
                lengths[w] = pos
            alive = nxt
            if not alive:
                break
        else:
            for w in alive:
                lengths[w] = len(chain)
        return {w: lengths.get(w, 0) for w in self.workers}


REPEATS = 5


def timed(label: str, count: int, prepare: Callable[[], Callable[[], None]],
          repeats: int = REPEATS) -> dict[str, Any]:
    """Best of ``repeats`` runs of the body ``prepare()`` returns (set-up not timed).

    The machine is shared, so the best run is the least disturbed one; GC is off
    while a body runs.
    """
    runs = []
    for _ in range(repeats):
        body = prepare()
        gc.collect()
        gc.disable()
        start = time.perf_counter()
        try:
            body()
        finally:
            gc.enable()
        runs.append(time.perf_counter() - start)
    seconds = min(runs)
    progress(f"  {label}: {count:,} in {seconds:.3f} s ({count / seconds:,.0f}/s, "
             f"best of {repeats})")
    return {"seconds": seconds, "per_second": count / seconds,
            "runs_seconds": [round(r, 6) for r in runs]}


def load_dynamo() -> tuple[Any, str | None, str]:
    """(RadixTree class or None, error text or None, version)."""
    try:
        core = importlib.import_module("dynamo._core")
        from importlib.metadata import version
        return core.RadixTree, None, version("ai-dynamo-runtime")
    except Exception as exc:  # any import failure is reported verbatim, not raised
        return None, f"{type(exc).__name__}: {exc}", "not installed"


def bench_ours(stream: list[RawEvent], queries: list[list[int]], workers: int,
               ) -> tuple[dict[str, Any], list[dict[int, int]]]:
    """Apply (pre-validated and from JSON), then lookups over all workers."""
    events = ours_events(stream)
    wire = ours_json(stream)
    holder: list[PrefixIndex] = []

    def prepare_apply() -> Callable[[], None]:
        index = PrefixIndex(max_entries=None)
        holder[:] = [index]
        return lambda: _drain(index.apply, events)

    def prepare_parse_apply() -> Callable[[], None]:
        index = PrefixIndex(max_entries=None)
        return lambda: _drain(lambda raw: index.apply(json.loads(raw)), wire)

    apply = timed("toposched apply (validated events)", len(events), prepare_apply)
    parse_apply = timed("toposched parse JSON + apply", len(wire), prepare_parse_apply)
    index = holder[0]
    for name in (f"w{i}" for i in range(workers)):  # every worker known, as in a cluster
        index.set_capacity(name, None)
    lookup = timed("toposched match over all workers", len(queries),
                   lambda: lambda: _drain(index.match, queries))
    results = [{int(n[1:]): m.blocks for n, m in index.match(q).items() if m.blocks}
               for q in queries]
    stats = index.stats()
    return {"apply": apply, "parse_apply": parse_apply, "lookup": lookup,
            "entries": stats.entries, "blocks": stats.blocks}, results


def _drain(function: Callable[[Any], object], items: Sequence[Any]) -> None:
    for item in items:
        function(item)


def bench_dynamo(radix_tree: Any, stream: list[RawEvent], queries: list[list[int]],
                 ) -> tuple[dict[str, Any], list[dict[int, int]]]:
    """The same stream through ``dynamo._core.RadixTree`` (JSON bytes, as its API takes)."""
    wire = dynamo_json(stream)
    holder: list[Any] = []

    def prepare_apply() -> Callable[[], None]:
        tree = radix_tree()
        holder[:] = [tree]
        return lambda: _drain(lambda pair: tree.apply_event(*pair), wire)

    apply = timed("dynamo RadixTree apply_event (JSON)", len(wire), prepare_apply)
    tree = holder[0]
    lookup = timed("dynamo RadixTree find_matches", len(queries),
                   lambda: lambda: _drain(tree.find_matches, queries))
    results = [{key[0] if isinstance(key, tuple) else key: value
                for key, value in tree.find_matches(q).scores.items() if value}
               for q in queries]
    return {"apply": apply, "lookup": lookup}, results


def bench_dict(stream: list[RawEvent], queries: list[list[int]], workers: int) -> dict[str, Any]:
    """The plain-dict baseline on the same stream and queries."""
    holder: list[DictBaseline] = []

    def prepare_apply() -> Callable[[], None]:
        base = DictBaseline(workers)
        holder[:] = [base]
        return lambda: _drain(base.apply, stream)

    apply = timed("dict baseline apply", len(stream), prepare_apply)
    lookup = timed("dict baseline match", len(queries),
                   lambda: lambda: _drain(holder[0].match, queries))
    return {"apply": apply, "lookup": lookup}


def run_scale(chains: list[list[int]], queries: list[list[int]], workers: int,
              unique: int, radix_tree: Any) -> dict[str, Any]:
    """Everything for one worker count."""
    capacity = math.ceil(0.5 * unique / workers)
    stream = build_stream(chains, workers, capacity)
    stored = sum(len(e.hashes) for e in stream if e.stored)
    removed = sum(len(e.hashes) for e in stream if not e.stored)
    progress(f"{workers} workers: capacity {capacity} blocks/worker, {len(stream):,} events "
             f"({stored:,} blocks stored, {removed:,} removed)")
    row: dict[str, Any] = {"workers": workers, "capacity_blocks": capacity,
                           "events": len(stream), "blocks_stored": stored,
                           "blocks_removed": removed}
    row["toposched"], ours = bench_ours(stream, queries, workers)
    row["dict_baseline"] = bench_dict(stream, queries, workers)
    if radix_tree is not None:
        row["dynamo"], theirs = bench_dynamo(radix_tree, stream, queries)
        row["agreement"] = sum(a == b for a, b in zip(ours, theirs, strict=True))
    return row


def memory_bench(entries: int, workers: int, chain_len: int = 64) -> dict[str, Any]:
    """Bytes per (worker, block) entry: ``entries`` random-hash blocks in chains of
    ``chain_len``, chains dealt round-robin to ``workers`` (worst case for masks)."""
    import random

    rnd = random.Random(11)
    index = PrefixIndex(max_entries=None)
    events = []
    for c in range(entries // chain_len):
        hashes = tuple(rnd.getrandbits(64) for _ in range(chain_len))
        events.append(BlockStored(worker=f"w{c % workers}", seq=c // workers,
                                  block_hashes=hashes))
    gc.collect()
    tracemalloc.start()
    for event in events:
        index.apply(event)
    del events
    gc.collect()
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = index.stats()
    result = {"entries": stats.entries, "workers": workers, "bytes": used,
              "bytes_per_entry": used / stats.entries}
    progress(f"memory: {stats.entries:,} entries on {workers} workers → "
             f"{used / 1e6:,.1f} MB ({used / stats.entries:.0f} B/entry)")
    return result


def write_report(out: Path, data: dict[str, Any]) -> None:
    """JSON and Markdown next to each other."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix_index.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "prefix_index.md").write_text(render_markdown(data))


def _rate(cell: dict[str, Any] | None, key: str) -> str:
    if not cell:
        return "—"
    return f"{cell[key]['per_second']:,.0f}"


def _ratio(a: dict[str, Any], b: dict[str, Any] | None, key: str) -> str:
    if not b:
        return "—"
    return f"{a[key]['per_second'] / b[key]['per_second']:.2f}×"


def render_markdown(data: dict[str, Any]) -> str:
    """The human report."""
    env = data["environment"]
    lines = [
        "# Prefix index benchmark",
        "",
        f"Generated by `bench/prefix_index.py` on {env['date']} — {env['machine']}, "
        f"{env['cpus']} CPUs, Python {env['python']}, Dynamo `ai-dynamo-runtime` "
        f"{env['dynamo_version']}. GC disabled during each timed phase.",
        "",
        f"Trace: Mooncake `conversation_trace.jsonl`, {data['requests']:,} requests "
        f"({data['trace_blocks']:,} blocks, {data['unique_blocks']:,} unique; 512-token "
        f"blocks). {data['trace_note']}",
        "",
        "Stream: request → worker `hash_ids[1] % N` (prefix-affine: block 0 is shared "
        "by every request of this trace); each worker an LRU cache holding "
        "`ceil(0.5 × unique / N)` blocks; per request one `BlockStored` with the "
        "missing blocks and, on overflow, one `BlockRemoved`. Lookups: "
        f"{data['queries']:,} trace requests sampled evenly, each matched against all "
        "N workers on the final state. Each figure is the best of "
        f"{REPEATS} runs (apply runs start from an empty index each time).",
        "",
    ]
    if data.get("dynamo_error"):
        lines += [f"**Dynamo's RadixTree did not run:** `{data['dynamo_error']}`. "
                  "Its column is empty; the code path is kept in the script.", ""]
    lines += [
        "| workers | events | toposched apply /s | toposched JSON→apply /s | "
        "Dynamo apply_event /s | dict apply /s | apply ratio (ours/Dynamo, JSON) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["scales"]:
        ours, dyn = row["toposched"], row.get("dynamo")
        ratio = (f"{ours['parse_apply']['per_second'] / dyn['apply']['per_second']:.2f}×"
                 if dyn else "—")
        lines.append(f"| {row['workers']:,} | {row['events']:,} | {_rate(ours, 'apply')} | "
                     f"{_rate(ours, 'parse_apply')} | {_rate(dyn, 'apply')} | "
                     f"{_rate(row['dict_baseline'], 'apply')} | {ratio} |")
    lines += [
        "",
        "| workers | toposched match /s | Dynamo find_matches /s | dict match /s | "
        "lookup ratio (ours/Dynamo) | results equal |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in data["scales"]:
        ours, dyn = row["toposched"], row.get("dynamo")
        agree = f"{row['agreement']:,}/{data['queries']:,}" if dyn else "—"
        lines.append(f"| {row['workers']:,} | {_rate(ours, 'lookup')} | "
                     f"{_rate(dyn, 'lookup')} | {_rate(row['dict_baseline'], 'lookup')} | "
                     f"{_ratio(ours, dyn, 'lookup')} | {agree} |")
    lines += ["", "Memory of the toposched index (tracemalloc; random 64-bit hashes in "
              "chains of 64, chains dealt round-robin to the workers):", "",
              "| workers | entries | MB | bytes / entry |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {m['workers']:,} | {m['entries']:,} | {m['bytes'] / 1e6:,.1f} | "
              f"{m['bytes_per_entry']:.0f} |" for m in data["memory"]]
    lines += [
        "",
        "Notes:",
        "",
        "- *toposched apply* takes already-validated pydantic events (the sidecar "
        "boundary validates once); *JSON→apply* includes `json.loads` and pydantic "
        "validation, the fair comparison with Dynamo's `apply_event`, which takes "
        "JSON bytes and parses them in Rust.",
        "- Dynamo's Python `RadixTree` forwards every call to a background thread "
        "over a channel, so each call pays a thread hand-off; its native Rust "
        "throughput is higher than what Python callers see here.",
        "- toposched reports every worker (zeros included) per lookup; Dynamo only "
        "workers with a match. *Results equal* compares the non-zero matches.",
        f"- Run-to-run spread (slowest / fastest of the {REPEATS} runs, worst phase "
        f"over all scales): toposched {_spread(data, 'toposched')}, Dynamo "
        f"{_spread(data, 'dynamo')}, dict {_spread(data, 'dict_baseline')}. Dynamo's "
        "calls cross threads, so their speed depends on where the OS schedules its "
        "worker thread; on this 2-core machine whole runs of the script differed up "
        "to ~8× for Dynamo. The tables keep the fastest run of each.",
        "",
    ]
    return "\n".join(lines)


def _spread(data: dict[str, Any], implementation: str) -> str:
    ratios = [max(cell["runs_seconds"]) / min(cell["runs_seconds"])
              for row in data["scales"] if implementation in row
              for cell in row[implementation].values() if isinstance(cell, dict)]
    return f"{max(ratios):.1f}×" if ratios else "—"


def main(argv: list[str] | None = None) -> int:
    """Run every scale and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None,
                        help="use only the first N trace requests (default: all)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--memory-entries", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="*", default=list(WORKER_COUNTS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    chains = load_trace(TRACE, args.requests)
    unique = len({h for chain in chains for h in chain})
    step = max(1, len(chains) // args.queries)
    queries = chains[::step][: args.queries]
    radix_tree, dynamo_error, dynamo_version = load_dynamo()
    if dynamo_error:
        progress(f"Dynamo RadixTree unavailable: {dynamo_error}")
    progress(f"{len(chains):,} requests, {unique:,} unique blocks, {len(queries):,} queries")
    scales = [run_scale(chains, queries, n, unique, radix_tree) for n in args.workers]
    memory = [memory_bench(args.memory_entries, n)
              for n in sorted({min(args.workers), max(args.workers)})]
    note = ("Whole trace." if args.requests is None else
            f"First {len(chains):,} requests only (--requests).")
    data = {
        "environment": {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                        "machine": platform.platform(), "cpus": _cpus(),
                        "dynamo_version": dynamo_version},
        "requests": len(chains), "trace_blocks": sum(map(len, chains)),
        "unique_blocks": unique, "queries": len(queries), "trace_note": note,
        "dynamo_error": dynamo_error, "scales": scales, "memory": memory,
        "wall_seconds": time.perf_counter() - started,
    }
    write_report(args.out, data)
    progress(f"done in {data['wall_seconds']:.1f} s → {args.out / 'prefix_index.md'}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


if __name__ == "__main__":
    raise SystemExit(main())
