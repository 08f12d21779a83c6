"""Benchmark: the KV prefix index against NVIDIA Dynamo's Rust radix tree, side by side.

Run: ``.venv/bin/python bench/prefix_index.py`` (``--workers 64 1024``,
``--conditions awake idle loaded``, ``--repeats 5``, ``--requests N`` for a quick
run, ``--out DIR``). Writes ``bench/results/prefix_index.json`` and ``.md``.

Everything goes through :mod:`bench.harness`: toposched and Dynamo alternate
repetition by repetition on identical work, and their answers are compared.

Stream. Each Mooncake conversation-trace request (``hash_ids``: chained ids of
512-token blocks) goes to worker ``hash_ids[1] % N`` (block 0 is shared by every
request of the trace; the second block tells conversations apart, so turns of one
conversation land on one worker, as a prefix-affine router sends them). Each
worker is an LRU cache of ``ceil(0.5 × unique blocks / N)`` blocks; each request
emits one stored event (the blocks the worker lacked, with their parent) and, on
overflow, one removed event. Both sides get the stream in their own wire form —
JSON bytes, parsed and validated by the index (toposched: ``PrefixIndex.apply``
on the bytes, validated exactly as ``parse_event`` does; Dynamo:
``RadixTree.apply_event``, which parses in Rust).

Three figures, each per worker count:

* **stored events/s** — the whole stream applied to an empty index;
  answers compared on the lookup queries afterwards (untimed);
* **raw lookups/s** — ``--queries`` trace requests sampled evenly, each matched
  against every worker on the final state (toposched ``match``, Dynamo
  ``find_matches``); the per-worker depths are compared;
* **route-then-store req/s** — the trace replayed on an empty index: look the
  request up, pick the worker (deepest match past the shared block 0, lowest
  worker number on ties; else the affine hash; each side scans its own result
  type with C-level scans), then apply the stored event the engine would send
  for it (the blocks that worker lacked; JSON prepared beforehand from an untimed
  replay, so both sides pay only lookup + pick + apply).
  The chosen workers are compared.

Memory: RSS growth of a fresh process that applies the stream (same method for
both sides), per (worker, block) entry and per distinct block; and the toposched
index's own allocations (tracemalloc).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from scheduler.prefix.index import PrefixIndex  # noqa: E402
from sim.scenarios import default_trace_dir  # noqa: E402

TRACE = default_trace_dir() / "mooncake" / "conversation_trace.jsonl"
WORKER_COUNTS = (64, 1024)
TAG = "prefix-bench"


def progress(message: str) -> None:
    harness.progress(TAG, message)


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


def affine(chain: Sequence[int], workers: int) -> int:
    """Prefix-affine routing on the first block that differs between conversations."""
    return (chain[1] if len(chain) > 1 else chain[0]) % workers


def build_stream(chains: list[list[int]], workers: int, capacity: int) -> list[RawEvent]:
    """Simulate N LRU worker caches and emit their stored / removed events."""
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(workers)]
    seqs = [0] * workers
    events: list[RawEvent] = []
    for chain in chains:
        w = affine(chain, workers)
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


# ---------------------------------------------------------------- wire forms


def ours_wire(e: RawEvent) -> bytes:
    """toposched's KV-event JSON (what a sidecar posts)."""
    if e.stored:
        body: dict[str, Any] = {"kind": "block_stored", "worker": f"w{e.worker}", "seq": e.seq,
                                "block_hashes": list(e.hashes)}
        if e.parent is not None:
            body["parent_hash"] = e.parent
    else:
        body = {"kind": "block_removed", "worker": f"w{e.worker}", "seq": e.seq,
                "block_hashes": list(e.hashes)}
    return json.dumps(body).encode()


def dynamo_wire(e: RawEvent) -> tuple[int, bytes]:
    """Dynamo's ``KvCacheEvent`` JSON (block hash = tokens hash = trace id)."""
    if e.stored:
        data: dict[str, Any] = {"stored": {"parent_hash": e.parent, "blocks": [
            {"block_hash": h, "tokens_hash": h} for h in e.hashes]}}
    else:
        data = {"removed": {"block_hashes": list(e.hashes)}}
    return e.worker, json.dumps({"event_id": e.seq, "data": data}).encode()


# ---------------------------------------------------------------- canonical answers


def ours_depths(result: dict[str, Any]) -> dict[int, int]:
    """toposched match → {worker number: depth} for workers with a match."""
    return {int(name[1:]): info.blocks for name, info in result.items() if info.blocks}


def dynamo_depths(scores: Any) -> dict[int, int]:
    """Dynamo OverlapScores → {worker number: depth} for workers with a match."""
    return {(key[0] if isinstance(key, tuple) else key): value
            for key, value in scores.scores.items() if value}


def load_dynamo() -> tuple[Any, str | None]:
    """(RadixTree class or None, error text or None)."""
    try:
        from dynamo._core import RadixTree  # type: ignore[import-not-found]
    except Exception as exc:  # any import failure is reported verbatim, not raised
        return None, f"{type(exc).__name__}: {exc}"
    return RadixTree, None


def _new_index() -> PrefixIndex:
    return PrefixIndex(max_entries=None)


# ---------------------------------------------------------------- the three figures


def events_sides(stream: list[RawEvent], queries: list[list[int]], radix_tree: Any,
                 ) -> list[harness.Side]:
    """Stored events/s: the whole stream from wire JSON into an empty index."""
    ours = [ours_wire(e) for e in stream]
    theirs = [dynamo_wire(e) for e in stream]

    def prepare_dynamo() -> Callable[[], Any]:
        tree = radix_tree()

        def body() -> Any:
            apply = tree.apply_event
            for worker, raw in theirs:
                apply(worker, raw)
            return tree
        return body

    def prepare_ours() -> Callable[[], Any]:
        index = _new_index()

        def body() -> Any:
            apply = index.apply
            for raw in ours:
                apply(raw)
            return index
        return body

    return [
        harness.Side("dynamo", prepare_dynamo, ops=len(stream), canonical=lambda tree: [
            dynamo_depths(tree.find_matches(q)) for q in queries]),
        harness.Side("toposched", prepare_ours, ops=len(stream), canonical=lambda index: [
            ours_depths(index.match(q)) for q in queries]),
    ]


def lookup_sides(stream: list[RawEvent], queries: list[list[int]], radix_tree: Any,
                 workers: int) -> list[harness.Side]:
    """Raw lookups/s on the final state of the stream."""
    tree = radix_tree()
    for worker, raw in map(dynamo_wire, stream):
        tree.apply_event(worker, raw)
    index = _new_index()
    for raw in map(ours_wire, stream):
        index.apply(raw)
    for name in (f"w{i}" for i in range(workers)):  # every worker known, as in a cluster
        index.set_capacity(name, None)

    def prepare_dynamo() -> Callable[[], Any]:
        find = tree.find_matches
        return lambda: [find(q) for q in queries]

    def prepare_ours() -> Callable[[], Any]:
        match = index.match
        return lambda: [match(q) for q in queries]

    return [
        harness.Side("dynamo", prepare_dynamo, ops=len(queries),
                     canonical=lambda out: [dynamo_depths(s) for s in out]),
        harness.Side("toposched", prepare_ours, ops=len(queries),
                     canonical=lambda out: [ours_depths(r) for r in out]),
    ]


def pick(depths: dict[int, int], chain: Sequence[int], workers: int) -> int:
    """Deepest match past block 0 (lowest worker number on ties), else the affine hash."""
    best = max(depths.values(), default=0)
    if best <= 1:
        return affine(chain, workers)
    return min(w for w, d in depths.items() if d == best)


def pick_ours(result: dict[str, Any], chain: Sequence[int], workers: int,
              numbers: dict[str, int]) -> int:
    """:func:`pick` on a toposched match, written for its result (C-level scans)."""
    best = max(result.values())  # MatchInfo tuples order by blocks first
    if best.blocks <= 1:
        return affine(chain, workers)
    values = list(result.values())
    if values.count(best) == 1:
        return numbers[next(islice(result, values.index(best), None))]
    return min(numbers[n] for n, m in result.items() if m.blocks == best.blocks)


def pick_dynamo(found: Any, chain: Sequence[int], workers: int) -> int:
    """:func:`pick` on Dynamo's ``OverlapScores``, written for its result (C-level scans)."""
    scores = found.scores
    best = max(scores.values(), default=0)
    if best <= 1:
        return affine(chain, workers)
    values = list(scores.values())
    if values.count(best) == 1:
        return int(next(islice(scores, values.index(best), None))[0])
    return min(int(k[0]) for k, v in scores.items() if v == best)


def plan_routes(chains: list[list[int]], workers: int,
                ) -> tuple[list[int], list[tuple[int, int, int | None]]]:
    """Untimed replay: the worker each request goes to and (start, seq, parent) of its store."""
    held: list[set[int]] = [set() for _ in range(workers)]
    owners: dict[int, set[int]] = {}
    seqs = [0] * workers
    decisions: list[int] = []
    stores: list[tuple[int, int, int | None]] = []
    for chain in chains:
        alive = set(owners.get(chain[0], ()))
        depths = dict.fromkeys(alive, 1)
        for pos in range(1, len(chain)):
            alive &= owners.get(chain[pos], set())
            if not alive:
                break
            depths.update(dict.fromkeys(alive, pos + 1))
        w = pick(depths, chain, workers)
        start = 0
        while start < len(chain) and chain[start] in held[w]:
            start += 1
        decisions.append(w)
        stores.append((start, seqs[w], chain[start - 1] if start else None))
        if start < len(chain):
            seqs[w] += 1
            for h in chain[start:]:
                held[w].add(h)
                owners.setdefault(h, set()).add(w)
    return decisions, stores


def route_sides(chains: list[list[int]], radix_tree: Any, workers: int) -> list[harness.Side]:
    """Route-then-store req/s: lookup, pick, apply the engine's stored event."""
    decisions, stores = plan_routes(chains, workers)
    ours: list[bytes | None] = []
    theirs: list[bytes | None] = []
    for chain, w, (start, seq, parent) in zip(chains, decisions, stores, strict=True):
        if start >= len(chain):
            ours.append(None)
            theirs.append(None)
            continue
        e = RawEvent(w, seq, True, tuple(chain[start:]), parent)
        ours.append(ours_wire(e))
        theirs.append(dynamo_wire(e)[1])

    def prepare_dynamo() -> Callable[[], Any]:
        tree = radix_tree()

        def body() -> list[int]:
            chosen = []
            find, apply = tree.find_matches, tree.apply_event
            for chain, raw, planned in zip(chains, theirs, decisions, strict=True):
                w = pick_dynamo(find(chain), chain, workers)
                chosen.append(w)
                if raw is not None and w == planned:
                    apply(w, raw)
            return chosen
        return body

    def prepare_ours() -> Callable[[], Any]:
        index = _new_index()
        for name in (f"w{i}" for i in range(workers)):
            index.set_capacity(name, None)
        numbers = {f"w{i}": i for i in range(workers)}

        def body() -> list[int]:
            chosen = []
            match, apply = index.match, index.apply
            for chain, raw, planned in zip(chains, ours, decisions, strict=True):
                w = pick_ours(match(chain), chain, workers, numbers)
                chosen.append(w)
                if raw is not None and w == planned:
                    apply(raw)
            return chosen
        return body

    return [harness.Side("dynamo", prepare_dynamo, ops=len(chains)),
            harness.Side("toposched", prepare_ours, ops=len(chains))]


# ---------------------------------------------------------------- memory

_MEMORY_PROBE = """
import gc, json, sys, tracemalloc
sys.path.insert(0, {root!r})
side, mode, path = sys.argv[1], sys.argv[2], sys.argv[3]
lines = [l for l in open(path, 'rb').read().split(b'\\n') if l]
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
if side == 'dynamo':
    from dynamo._core import RadixTree
    items = [(int(l.split(b' ', 1)[0]), l.split(b' ', 1)[1]) for l in lines]
    index = RadixTree(); apply = lambda item: index.apply_event(*item)
else:
    from scheduler.prefix.index import PrefixIndex
    items = lines
    index = PrefixIndex(max_entries=None); apply = index.apply
gc.collect()
if mode == 'traced':
    tracemalloc.start()
before = rss()
for item in items:
    apply(item)
gc.collect()
out = {{'rss': rss() - before}}
if mode == 'traced':
    out['traced'] = tracemalloc.get_traced_memory()[0]
print(json.dumps(out))
"""


def memory(stream: list[RawEvent], workers: int, out: Path, has_dynamo: bool) -> dict[str, Any]:
    """Bytes per entry and per block, each side in a fresh process (stored events only).

    RSS growth is measured without tracemalloc (its own records would count); the
    toposched index's traced allocations come from a second process.
    """
    stored = [e for e in stream if e.stored]
    entries = sum(len(e.hashes) for e in stored)
    blocks = len({h for e in stored for h in e.hashes})
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"workers": workers, "entries": entries, "blocks": blocks}
    probe = _MEMORY_PROBE.format(root=str(ROOT))
    sides = {"toposched": b"\n".join(ours_wire(e) for e in stored)}
    if has_dynamo:
        sides["dynamo"] = b"\n".join(b"%d %s" % dynamo_wire(e) for e in stored)
    for side, data in sides.items():
        path = out / f".memory-{side}-{workers}.txt"
        path.write_bytes(data)
        try:
            numbers: dict[str, Any] = {}
            for mode in ("rss", "traced") if side == "toposched" else ("rss",):
                done = subprocess.run([sys.executable, "-c", probe, side, mode, str(path)],
                                      capture_output=True, text=True, check=True, timeout=600)
                measured = json.loads(done.stdout)
                numbers["rss" if mode == "rss" else "traced"] = measured[mode]
        finally:
            path.unlink()
        result[side] = {**numbers, "rss_per_entry": numbers["rss"] / entries,
                        "rss_per_block": numbers["rss"] / blocks}
        if "traced" in numbers:
            result[side]["traced_per_entry"] = numbers["traced"] / entries
    return result


# ---------------------------------------------------------------- report

FIGURES = (("events", "stored events/s"), ("lookups", "raw lookups/s"),
           ("route", "route-then-store req/s"))


def render_markdown(data: dict[str, Any]) -> str:
    """The human report."""
    env = data["environment"]
    lines = ["# Prefix index vs Dynamo's RadixTree", ""]
    lines += harness.environment_markdown(env, "bench/prefix_index.py", data["command"])
    lines += [
        f"Trace: Mooncake `conversation_trace.jsonl`, {data['requests']:,} requests "
        f"({data['unique_blocks']:,} unique 512-token blocks). {data['trace_note']} "
        f"Lookups: {data['queries']:,} requests sampled evenly.",
        "",
        "Anchor: `dynamo._core.RadixTree` from `ai-dynamo-runtime` "
        f"{env['packages'].get('ai-dynamo-runtime', '?')}, called from Python as its "
        "API is meant to be used (one call per event / lookup; it has no batch call), "
        "with its own JSON event format. It forwards each call to a background Rust "
        "thread and waits for the answer, so its Python-visible speed depends on that "
        "thread's vCPU being awake: the `awake` condition is its best case on this VM.",
        "",
    ]
    if data.get("dynamo_error"):
        lines += [f"**Dynamo's RadixTree did not run:** `{data['dynamo_error']}`.", ""]
    for cond in data["conditions"]:
        lines += [f"## {cond['name']}", "", harness.condition_line(cond["condition"]), "",
                  "| workers | figure | toposched | Dynamo | toposched / Dynamo (wall) | "
                  "CPU µs/op toposched | CPU µs/op Dynamo | toposched / Dynamo (CPU) |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in cond["scales"]:
            for key, label in FIGURES:
                cmp_ = row.get(key)
                if cmp_ is None:
                    continue
                ours = harness.Stats(tuple(cmp_["sides"]["toposched"]["rate_per_second"]
                                           ["values"]))
                line = f"| {row['workers']:,} | {label} | {harness.fmt_rate(ours)} | "
                if "dynamo" in cmp_["sides"]:
                    theirs = harness.Stats(tuple(cmp_["sides"]["dynamo"]["rate_per_second"]
                                                 ["values"]))
                    ratio = harness.Stats(tuple(cmp_["paired_ratio_vs_first"]["toposched"]
                                                ["values"]))
                    cpu = harness.Stats(tuple(cmp_["paired_cpu_ratio_vs_first"]["toposched"]
                                              ["values"]))
                    line += (f"{harness.fmt_rate(theirs)} | **{harness.fmt_ratio(ratio)}** | "
                             f"{_cpu_us(cmp_, 'toposched')} | {_cpu_us(cmp_, 'dynamo')} | "
                             f"{harness.fmt_ratio(cpu)} |")
                else:
                    line += "— | — | — | — | — |"
                lines.append(line)
        lines.append("")
    lines += ["Wall figures are operations per second of wall time (what a caller sees); "
              "CPU figures are process CPU time per operation, all threads (Dynamo's Rust "
              "thread included) — the work each side does, which other load on the "
              "machine moves much less than wall time. Under load the OS favours a side "
              "that blocks and wakes (Dynamo's call hand-off) over one that computes, so "
              "wall ratios then measure the scheduler as much as the code.", ""]
    lines += ["## Memory", "",
              "RSS growth of a fresh process applying every stored event of the stream "
              "(no removals, so all entries stay), same method for both; toposched's "
              "own allocations by tracemalloc beside it.", "",
              "| workers | (worker, block) entries | distinct blocks | toposched B/entry "
              "(RSS) | toposched B/entry (traced) | Dynamo B/entry (RSS) | toposched "
              "B/block | Dynamo B/block |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in data["memory"]:
        ours, theirs = m["toposched"], m.get("dynamo")
        lines.append(
            f"| {m['workers']:,} | {m['entries']:,} | {m['blocks']:,} | "
            f"{ours['rss_per_entry']:.0f} | {ours['traced_per_entry']:.0f} | "
            f"{theirs['rss_per_entry'] if theirs else float('nan'):.0f} | "
            f"{ours['rss_per_block']:.0f} | "
            f"{theirs['rss_per_block'] if theirs else float('nan'):.0f} |")
    lines += ["", "Answers: in every repetition both sides returned the same per-worker "
              "match depths for every lookup query (events, lookups) and chose the same "
              "worker for every request (route-then-store); a difference aborts the run.",
              ""]
    return "\n".join(lines)


def _cpu_us(comparison: dict[str, Any], side: str) -> str:
    cell = comparison["sides"][side]
    return f"{cell['cpu_seconds']['median'] / cell['ops'] * 1e6:,.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run every condition and scale, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None,
                        help="use only the first N trace requests (default: all)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKER_COUNTS))
    parser.add_argument("--figures", nargs="+", default=[k for k, _ in FIGURES],
                        choices=[k for k, _ in FIGURES])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    harness.add_arguments(parser, conditions=("awake", "idle", "loaded"), repeats=5)
    args = parser.parse_args(argv)
    chains = load_trace(TRACE, args.requests)
    unique = len({h for chain in chains for h in chain})
    step = max(1, len(chains) // args.queries)
    queries = chains[::step][: args.queries]
    radix_tree, dynamo_error = load_dynamo()
    if dynamo_error:
        progress(f"Dynamo RadixTree unavailable: {dynamo_error}")
    streams = {n: build_stream(chains, n, math.ceil(0.5 * unique / n)) for n in args.workers}
    conditions = []
    with harness.session(args, packages=["ai-dynamo-runtime"], tag=TAG) as run:
        for name in run.conditions:
            scales = []
            with harness.cpu_condition(name) as cond:
                for n in args.workers:
                    scales.append(run_scale(args.figures, chains, queries, streams[n], n,
                                            radix_tree, run))
            conditions.append({"name": name, "condition": cond.as_dict(), "scales": scales})
        mem = [] if args.no_memory else [
            memory(streams[n], n, args.out, radix_tree is not None) for n in args.workers]
        env = run.finish()
    command = "flock /tmp/toposched-bench.lock .venv/bin/python bench/prefix_index.py" + (
        " " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    note = ("Whole trace." if args.requests is None else
            f"First {len(chains):,} requests only (--requests).")
    data = {"environment": env, "command": command, "requests": len(chains),
            "unique_blocks": unique, "queries": len(queries), "trace_note": note,
            "dynamo_error": dynamo_error, "conditions": conditions, "memory": mem}
    harness.write_json(args.out / "prefix_index.json", data)
    (args.out / "prefix_index.md").write_text(render_markdown(data))
    progress(f"done in {env['wall_seconds']} s → {args.out / 'prefix_index.md'}")
    return 0


def run_scale(figures: Sequence[str], chains: list[list[int]], queries: list[list[int]],
              stream: list[RawEvent], workers: int, radix_tree: Any,
              run: harness.Session) -> dict[str, Any]:
    """The chosen figures at one worker count."""
    row: dict[str, Any] = {"workers": workers, "events": len(stream)}
    builders: dict[str, Callable[[], list[harness.Side]]] = {
        "events": lambda: events_sides(stream, queries, radix_tree),
        "lookups": lambda: lookup_sides(stream, queries, radix_tree, workers),
        "route": lambda: route_sides(chains, radix_tree, workers),
    }
    for key in figures:
        if radix_tree is None:
            progress(f"{workers} workers, {key}: no Dynamo, skipped")
            continue
        progress(f"{workers} workers: {key}")
        result = harness.compare(builders[key](), repeats=run.repeats, warmup=run.warmup,
                                 tag=TAG)
        row[key] = result.as_dict()
    return row


if __name__ == "__main__":
    raise SystemExit(main())
