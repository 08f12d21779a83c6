"""Benchmark: the shared state stores (memory vs Redis) and where the prefix index lives.

Run: ``.venv/bin/python bench/state_bench.py [--quick]`` (``--out DIR``, default
``bench/results``). Starts a private redis-server on a free loopback port.

Writes ``bench/results/state.json`` and ``state.md``. Three parts, one run:

1. Store operations, one client awaiting each call in turn (latency-bound, as a
   router handling one request at a time): register, heartbeat, allocate+release,
   put_job+wait_jobs, reserve+release — ops/s on :class:`MemoryStore` /
   :class:`MemoryLoads` and :class:`RedisStore`; plus the same allocations from 16
   concurrent tasks on two Redis replicas.
2. Job delivery latency: a sidecar long-polls while the scheduler queues one job at a
   time (in the same process, so one clock times both ends): the store's list path
   (Lua RPUSH + BLPOP), a raw list (RPUSH / BLPOP) and a raw stream (XADD /
   XREAD BLOCK) — p50/p99 from the put to the poll's return.
3. The prefix index: (a) resident in Redis — one set of workers per block key; a
   lookup is one round trip (a pipeline of SMEMBERS per chain block, or a Lua script
   that walks the chain and stops early); (b) a local
   :class:`~scheduler.prefix.PrefixIndex` per replica, fed from the KV event stream —
   lookup p50/p99, plus events/s for publishing to the stream, for replicating
   (read + parse + apply) and for writing the Redis-resident index.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from bench import harness  # noqa: E402
from scheduler.prefix.events import BlockStored, parse_event  # noqa: E402
from scheduler.prefix.index import PrefixIndex  # noqa: E402
from scheduler.state.memory import MemoryStore  # noqa: E402
from scheduler.state.redis_store import RedisStore  # noqa: E402
from scheduler.state.reservations import FIRST_EVENT_ID, MemoryLoads  # noqa: E402
from scheduler.transfer.plan import (  # noqa: E402
    KvLayout,
    KvRegion,
    TransferJob,
    WorkerRegistration,
)
from tests.servers import start_redis  # noqa: E402

WORKERS = 64
CHAIN = 32


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[state-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def registration(name: str, num_blocks: int = 4096) -> WorkerRegistration:
    """A worker with a fake NIXL agent and a one-region pool."""
    layout = KvLayout(num_blocks=num_blocks,
                      regions=(KvRegion(base_addr=0x7F00_0000_0000, block_bytes=65536),))
    return WorkerRegistration(name=name, agent_name=name, agent_metadata_b64="bWQ=",
                              layout=layout)


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean in microseconds."""
    ordered = sorted(samples_s)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6
    return {"p50_us": round(pick(0.50), 1), "p99_us": round(pick(0.99), 1),
            "mean_us": round(statistics.fmean(ordered) * 1e6, 1), "n": len(ordered)}


async def rate(n: int, op: Callable[[int], Awaitable[Any]]) -> float:
    """Operations per second of ``op(i)`` awaited one after another."""
    started = time.perf_counter()
    for i in range(n):
        await op(i)
    return round(n / (time.perf_counter() - started))


# -- 1. store operations -----------------------------------------------------------


async def store_ops(store: Any, loads: Any, n: int) -> dict[str, float]:
    """ops/s of the main store calls on one store."""
    regs = [registration(f"w{i % 256}") for i in range(n)]
    out = {"register": await rate(n, lambda i: store.register_worker(regs[i], 30.0))}
    out["heartbeat"] = await rate(n, lambda i: store.heartbeat(f"w{i % 256}"))

    async def alloc(i: int) -> None:
        await store.release_blocks("w0", await store.allocate_blocks("w0", 4))
    out["allocate_4+release"] = await rate(n, alloc)
    job = TransferJob(kind="abort", plan_id="req-1", reason="bench")

    async def job_round(i: int) -> None:
        await store.put_job("w1", job)
        await store.wait_jobs("w1", 0)
    out["put_job+wait_jobs"] = await rate(n, job_round)
    await loads.set_capacity("w0", 1 << 40, 1 << 30)

    async def reserve(i: int) -> None:
        await loads.reserve("w0", 512)
        await loads.release("w0", 512)
    out["reserve+release"] = await rate(n, reserve)
    return out


async def concurrent_allocations(url: str, n: int) -> dict[str, float]:
    """Allocations from 16 tasks over two replicas; checks no block went out twice."""
    a, b = (RedisStore(url, prefix="conc:") for _ in range(2))
    await a.register_worker(registration("w0", num_blocks=n * 2), 60.0)
    started = time.perf_counter()
    grants = await asyncio.gather(*(
        _allocate_many(store, n // 16) for store in (a, b) for _ in range(8)))
    elapsed = time.perf_counter() - started
    taken = [block for grant in grants for block in grant]
    assert len(taken) == len(set(taken)), "a block was handed out twice"
    await a.aclose()
    await b.aclose()
    return {"allocate_1_ops_per_s": round(len(taken) / elapsed), "blocks": len(taken),
            "duplicates": len(taken) - len(set(taken))}


async def _allocate_many(store: RedisStore, count: int) -> list[int]:
    return [block for _ in range(count) for block in await store.allocate_blocks("w0", 1)]


# -- 2. job delivery ---------------------------------------------------------------


DeliveryPath = tuple[Callable[[], Awaitable[Any]], Callable[[], Coroutine[Any, Any, int]]]


async def delivery(put: Callable[[], Awaitable[Any]],
                   poll: Callable[[], Coroutine[Any, Any, int]], n: int) -> list[float]:
    """Seconds from ``put()`` to the return of a ``poll()`` already waiting."""
    samples: list[float] = []
    for _ in range(n):
        waiter = asyncio.create_task(poll())
        await asyncio.sleep(0.0005)  # the poll is parked in Redis before the put
        started = time.perf_counter()
        await put()
        got = await waiter
        samples.append(time.perf_counter() - started)
        assert got == 1, got
    return samples


async def delivery_paths(url: str, n: int) -> dict[str, dict[str, float]]:
    """The store's list path, a raw list and a raw stream (same server, same run)."""
    memory = MemoryStore()
    store = RedisStore(url, prefix="deliv:")
    job = TransferJob(kind="abort", plan_id="req-1", reason="bench")
    for s in (memory, store):
        await s.register_worker(registration("side"), 600.0)
    raw = aioredis.Redis.from_url(url)
    blocking = aioredis.Redis.from_url(url)
    text = job.model_dump_json()
    last = ["0-0"]

    async def stream_poll() -> int:
        reply: Any = await blocking.xread({"deliv:stream": last[0]}, count=100, block=5000)
        entries = reply[0][1]
        last[0] = entries[-1][0]
        return len(entries)

    async def list_poll() -> int:
        return 1 if await blocking.blpop(["deliv:list"], 5) else 0

    paths: dict[str, DeliveryPath] = {
        "memory_store": (lambda: memory.put_job("side", job),
                         lambda: _count(memory.wait_jobs("side", 5))),
        "redis_store_list": (lambda: store.put_job("side", job),
                             lambda: _count(store.wait_jobs("side", 5))),
        "raw_list_rpush_blpop": (lambda: raw.rpush("deliv:list", text), list_poll),
        "raw_stream_xadd_xread": (lambda: raw.xadd("deliv:stream", {"j": text}, maxlen=1000),
                                  stream_poll),
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(10):  # interleaved rounds: load from other processes hits every path
        for name, (put, poll) in paths.items():
            samples[name] += await delivery(put, poll, n // 10)
    out = {name: percentiles(values) for name, values in samples.items()}
    for client in (raw, blocking):
        await client.aclose()
    await store.aclose()
    return out


async def _count(jobs: Awaitable[list[TransferJob]]) -> int:
    return len(await jobs)


# -- 3. prefix index ---------------------------------------------------------------


def workload(seed: int, chains: int) -> tuple[list[BlockStored], list[list[int]]]:
    """Stored chains (50 shared system prompts, 8 blocks each, then private turns) and
    lookups: half of them extend a stored chain, half diverge after the prompt."""
    rng = random.Random(seed)
    prompts = [[rng.getrandbits(63) for _ in range(8)] for _ in range(50)]
    events, stored = [], []
    for i in range(chains):
        chain = rng.choice(prompts) + [rng.getrandbits(63) for _ in range(CHAIN - 8)]
        stored.append(chain)
        events.append(BlockStored(worker=f"w{i % WORKERS}", seq=i // WORKERS + 1,
                                  block_hashes=tuple(chain)))
    lookups = []
    for i in range(1000):
        base = rng.choice(stored)
        cut = CHAIN if i % 2 else 8
        lookups.append(base[:cut] + [rng.getrandbits(63) for _ in range(CHAIN - cut)])
    return events, lookups


_WALK = """
local alive, best, left = nil, {}, 0
for i, key in ipairs(KEYS) do
  local now, count = {}, 0
  for _, w in ipairs(redis.call('SMEMBERS', key)) do
    if alive == nil or alive[w] then now[w] = true; best[w] = i; count = count + 1 end
  end
  alive, left = now, count
  if left == 0 then break end
end
local out = {}
for w, n in pairs(best) do out[#out + 1] = w; out[#out + 1] = n end
return out
"""


async def redis_index(url: str, events: list[BlockStored],
                      lookups: list[list[int]]) -> dict[str, Any]:
    """(a) The index resident in Redis: write rate, pipelined and Lua lookups."""
    raw = aioredis.Redis.from_url(url, decode_responses=True)
    key = "pfx:{}".format
    started = time.perf_counter()
    for event in events:
        pipe = raw.pipeline(transaction=False)
        for block in event.block_hashes:
            pipe.sadd(key(block), event.worker)
        await pipe.execute()
    write_rate = len(events) / (time.perf_counter() - started)

    async def pipelined(chain: list[int]) -> dict[str, int]:
        pipe = raw.pipeline(transaction=False)
        for block in chain:
            pipe.smembers(key(block))
        return _prefix_lengths(await pipe.execute())
    walk = raw.register_script(_WALK)

    async def scripted(chain: list[int]) -> dict[str, int]:
        flat = await walk(keys=[key(b) for b in chain])
        return dict(zip(flat[::2], flat[1::2], strict=True))
    out = {"write_events_per_s": round(write_rate),
           "lookup_pipelined_smembers": await _lookups(pipelined, lookups),
           "lookup_lua_walk": await _lookups(scripted, lookups)}
    await raw.aclose()
    return out


def _prefix_lengths(member_sets: list[set[str]]) -> dict[str, int]:
    best: dict[str, int] = {}
    alive: set[str] | None = None
    for i, members in enumerate(member_sets, 1):
        alive = set(members) if alive is None else alive & members
        if not alive:
            break
        best.update(dict.fromkeys(alive, i))
    return best


async def _lookups(lookup: Callable[[list[int]], Awaitable[dict[str, int]]],
                   chains: list[list[int]]) -> dict[str, float]:
    samples = []
    for chain in chains:
        started = time.perf_counter()
        await lookup(chain)
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def replicated_index(url: str, events: list[BlockStored],
                           lookups: list[list[int]]) -> dict[str, Any]:
    """(b) A local PrefixIndex fed from the KV event stream."""
    publisher = RedisStore(url, prefix="repl:", event_maxlen=len(events) * 2)
    texts = [event.model_dump_json() for event in events]
    started = time.perf_counter()
    for text in texts:
        await publisher.publish_kv_event(text)
    publish_rate = len(texts) / (time.perf_counter() - started)
    replica = RedisStore(url, prefix="repl:")
    index = PrefixIndex(max_entries=None)
    started = time.perf_counter()
    last, applied = FIRST_EVENT_ID, 0
    while applied < len(texts):
        batch, last = await replica.kv_events_since(last, 100, count=1000)
        for text in batch:
            index.apply(parse_event(text))
        applied += len(batch)
    replicate_rate = applied / (time.perf_counter() - started)
    samples = []
    for chain in lookups:
        t0 = time.perf_counter()
        index.match(chain)
        samples.append(time.perf_counter() - t0)
    for store in (publisher, replica):
        await store.aclose()
    return {"publish_events_per_s": round(publish_rate),
            "replicate_events_per_s": round(replicate_rate),
            "lookup_local_match": percentiles(samples),
            "index_entries": index.stats().model_dump().get("entries")}


def agree(url: str, events: list[BlockStored], lookups: list[list[int]]) -> bool:
    """The Redis-resident and the local index give the same prefix lengths."""
    index = PrefixIndex(max_entries=None)
    for event in events:
        index.apply(event)

    async def check() -> bool:
        raw = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            for chain in lookups[:200]:
                pipe = raw.pipeline(transaction=False)
                for block in chain:
                    pipe.smembers(f"pfx:{block}")
                remote = _prefix_lengths(await pipe.execute())
                local = {w: m.blocks for w, m in index.match(chain).items() if m.blocks}
                if remote != local:
                    return False
            return True
        finally:
            await raw.aclose()
    return asyncio.run(check())


# -- report ------------------------------------------------------------------------


async def run_all(url: str, quick: bool) -> dict[str, Any]:
    """Every part against one server."""
    n = 500 if quick else 3000
    progress(f"store operations ({n} each)")
    ops = {"memory": await store_ops(MemoryStore(), MemoryLoads(), n * 5)}
    redis_store = RedisStore(url, prefix="ops:")
    ops["redis"] = await store_ops(redis_store, redis_store, n)
    await redis_store.aclose()
    ops["redis_concurrent_2_replicas_16_tasks"] = await concurrent_allocations(url, n)
    progress("job delivery")
    jobs = await delivery_paths(url, 200 if quick else 2000)
    progress("prefix index")
    events, lookups = workload(7, 2000 if quick else 10_000)
    return {"store_ops_per_s": ops, "job_delivery": jobs,
            "prefix_index": {"redis_resident": await redis_index(url, events, lookups),
                             "replicated_local": await replicated_index(url, events, lookups),
                             "events": len(events), "chain_blocks": CHAIN,
                             "workers": WORKERS}}


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    ops = result["store_ops_per_s"]
    lines = ["# State stores: memory vs Redis", "",
             *harness.header_markdown(result, "bench/state_bench.py", compared=False),
             f"redis-server {result['redis_version']} on loopback; one Python client "
             "process (Redis numbers, which need two processes scheduled, suffer most "
             "from load).", "",
             "## Store operations (ops/s, one caller awaiting each call)", "",
             "| operation | memory | redis |", "| --- | ---: | ---: |"]
    lines += [f"| {op} | {ops['memory'][op]:,} | {ops['redis'][op]:,} |" for op in ops["redis"]]
    conc = ops["redis_concurrent_2_replicas_16_tasks"]
    lines += ["", f"Concurrent: 16 tasks on two Redis replicas allocated {conc['blocks']:,} "
              f"blocks at {conc['allocate_1_ops_per_s']:,} allocations/s, "
              f"{conc['duplicates']} handed out twice.", "",
              "## Job delivery latency (put → waiting long-poll returns)", "",
              "| path | p50 µs | p99 µs | mean µs |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {v['p50_us']} | {v['p99_us']} | {v['mean_us']} |"
              for name, v in result["job_delivery"].items()]
    pfx = result["prefix_index"]
    res, rep = pfx["redis_resident"], pfx["replicated_local"]
    lines += ["", f"## Prefix index ({pfx['events']:,} stored chains of {pfx['chain_blocks']} "
              f"blocks over {pfx['workers']} workers; 1,000 lookups)", "",
              "| lookup | p50 µs | p99 µs |", "| --- | ---: | ---: |"]
    for name, v in (("Redis-resident, pipelined SMEMBERS", res["lookup_pipelined_smembers"]),
                    ("Redis-resident, Lua chain walk", res["lookup_lua_walk"]),
                    ("local PrefixIndex (replicated)", rep["lookup_local_match"])):
        lines.append(f"| {name} | {v['p50_us']} | {v['p99_us']} |")
    lines += ["", "| event path | events/s |", "| --- | ---: |",
              f"| publish to the stream (XADD, one at a time) | {rep['publish_events_per_s']:,} |",
              f"| replicate: read + parse + apply | {rep['replicate_events_per_s']:,} |",
              f"| write the Redis-resident index (SADD per block) | "
              f"{res['write_events_per_s']:,} |", "",
              f"Both indexes agree on every checked lookup: {result['indexes_agree']}.", ""]
    return "\n".join(lines + decisions(result))


def decisions(result: dict[str, Any]) -> list[str]:
    """The two choices these numbers back (argued in full in docs/state.md)."""
    rep = result["prefix_index"]["replicated_local"]["lookup_local_match"]["p50_us"]
    res = result["prefix_index"]["redis_resident"]
    jobs = result["job_delivery"]
    gap = jobs["raw_stream_xadd_xread"]["p50_us"] - jobs["raw_list_rpush_blpop"]["p50_us"]
    return ["## Decisions", "",
            "- Prefix index: replicated per scheduler (a local `PrefixIndex` fed from the "
            f"`kv-events` stream). A local lookup was "
            f"{res['lookup_lua_walk']['p50_us'] / rep:.0f}× faster at p50 than the best "
            f"Redis-resident lookup (Lua walk) and "
            f"{res['lookup_pipelined_smembers']['p50_us'] / rep:.0f}× faster than the "
            "pipelined one, and puts no per-request load on Redis.",
            f"- Jobs: lists (RPUSH / BLMPOP). Stream p50 minus list p50: {gap:+.0f} µs in "
            "this run (within run-to-run noise); lists hand each job "
            "out once without consumer groups or cursors, so semantics decide.", ""]


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    harness.add_arguments(parser, conditions=("awake",), repeats=1, warmup=0)
    args = parser.parse_args(argv)

    def body() -> dict[str, Any]:
        server = start_redis()
        try:
            result = asyncio.run(run_all(server.url, args.quick))
            events, lookups = workload(7, 2000 if args.quick else 10_000)
            result["indexes_agree"] = agree(server.url, events, lookups)
            result["redis_version"] = asyncio.run(_server_version(server.url))
        finally:
            server.stop()
        return result

    result = harness.wrap_main(args, "state-bench", ["redis"], body, "bench/state_bench.py",
                               argv)
    harness.write_json(args.out / "state.json", result)
    (args.out / "state.md").write_text(markdown(result))
    progress(f"wrote {args.out / 'state.md'}")


async def _server_version(url: str) -> str:
    raw = aioredis.Redis.from_url(url, decode_responses=True)
    version = str((await raw.info("server"))["redis_version"])
    await raw.aclose()
    return version


if __name__ == "__main__":
    main()
