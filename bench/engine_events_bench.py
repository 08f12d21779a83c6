"""KV events from engines: ingestion rate from ZMQ into the index, and the lag to routing.

Two parts, each through ``bench/harness.py`` (alternating repetitions, identical work,
checked outputs, CPU condition and machine load recorded):

1. **Ingestion** (``--engines 1 4 16``): ``E`` protocol-faithful publishers
   (:class:`engines.fake.FakePublisher`, map encoding, replay buffers) run in a separate
   process and send, on a signal, ``--requests`` request chains per engine — each chain
   ``--chain-blocks`` blocks of 32 tokens, stored as ``BlockStored`` events of 4 blocks
   with parent links, 4 events per batch, as vLLM publishes them step by step. This
   process follows them exactly as the service does (:func:`engines.kv_feed.follow_publisher`
   → :class:`~engines.kv_feed.PublisherStream` → :class:`~engines.translate.KeyTranslator`
   → :meth:`PrefixIndex.apply`) until every event is in the index. Anchor: the same
   events, already translated, applied straight to a fresh index (the index's own cost);
   the candidate's figure therefore includes ZMQ, msgpack decoding and dual-key
   hashing. Both must leave identical indexes (entries and a digest of the keys).
   Reported: events/s in total and per engine, and the consumer's CPU per event.
2. **Lag to routing**: a ``toposched serve`` process with a fabric and ``--lag-engines``
   fake engines registered as instances (HTTP ``/health`` + ``/metrics`` and a publisher
   in this process; half of them take the candidate's events, half the anchor's). Each
   trial takes a fresh 16-block prompt; the clock starts when the event is handed over,
   and ``POST /v1/route`` is sent in a loop until the decision routes to that engine
   with the blocks counted as cached. Candidate: the engine
   publishes ``BlockStored`` on ZMQ. Anchor: the same blocks posted as toposched's own
   JSON event to ``POST /v1/kv-events`` (the pre-existing path). The lag includes one
   route round trip of probing.

Writes bench/results/engine_events.{md,json}.

    .venv/bin/python bench/engine_events_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import harness
from engines.events import EventBatch
from engines.fake import stored
from engines.kv_feed import PublisherStream, ReplayClient, follow_publisher
from engines.translate import KeyTranslator
from scheduler.prefix import PrefixIndex, block_hashes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BLOCK = 32
EVENT_BLOCKS = 4
EVENTS_PER_BATCH = 4
MODEL = "m"

# -- the publishers' process ---------------------------------------------------------

PUBLISHER = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from engines.fake import FakePublisher, encode_batch, stored
engines, requests, chain = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pubs = [FakePublisher(topic=f"kv@e{i}") for i in range(engines)]
from bench.engine_events_bench import engine_batches
from engines.fake import encode_batch
payloads = [engine_batches(i, requests, chain) for i in range(engines)]
print(json.dumps([[p.endpoint, p.replay_endpoint] for p in pubs]), flush=True)
if sys.stdin.readline().strip() == "go":
    for step in range(max(len(p) for p in payloads)):
        for pub, batches in zip(pubs, payloads):
            if step < len(batches):
                pub.publish(batches[step])
    print("sent", flush=True)
    sys.stdin.readline()  # the consumer is done (it may still ask for a replay until then)
for pub in pubs:
    pub.close()
'''


def engine_batches(engine: int, requests: int, chain_blocks: int) -> list[list[Any]]:
    """Engine ``engine``'s batches: request chains of ``chain_blocks`` blocks, stored
    ``EVENT_BLOCKS`` at a time with parent links, ``EVENTS_PER_BATCH`` events per batch."""
    rng = random.Random(engine)
    events: list[Any] = []
    for _ in range(requests):
        tokens = [rng.randrange(1 << 16) for _ in range(chain_blocks * BLOCK)]
        parent = None
        for start in range(0, chain_blocks, EVENT_BLOCKS):
            chunk = tokens[start * BLOCK:(start + EVENT_BLOCKS) * BLOCK]
            hashes = [rng.getrandbits(63) for _ in range(EVENT_BLOCKS)]
            events.append(stored(chunk, BLOCK, hashes=hashes, parent=parent))
            parent = hashes[-1]
    return [events[i:i + EVENTS_PER_BATCH] for i in range(0, len(events), EVENTS_PER_BATCH)]


def _digest(index: PrefixIndex) -> dict[str, Any]:
    snapshot = index.snapshot()
    digest = hashlib.sha256()
    for worker in sorted(snapshot.workers, key=lambda w: w.name):
        digest.update(worker.name.encode())
        for key in sorted(worker.gpu):
            digest.update(key.to_bytes(8, "little"))
    return {"entries": index.stats().entries, "sha256": digest.hexdigest()[:16]}


class Publishers:
    """The publishers' process, kept across repetitions."""

    def __init__(self, engines: int, requests: int, chain: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(ROOT), str(engines), str(requests),
             str(chain)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.process.stdout is not None
        self.endpoints: list[list[str]] = json.loads(self.process.stdout.readline())

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)


class Consumer:
    """Follows every publisher into one index, on an event loop in its own thread (set
    up before the timed part); :meth:`wait` returns once ``total`` events are in."""

    def __init__(self, endpoints: Sequence[list[str]], total: int) -> None:
        self.index = PrefixIndex(max_entries=None)
        self.endpoints, self.total, self.applied = endpoints, total, 0
        self.done = threading.Event()
        self.ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._run(),), daemon=True)
        self._thread.start()
        self.ready.wait(60)
        time.sleep(0.3)  # subscriptions reach the publishers (late ones are replayed anyway)

    async def _run(self) -> None:
        context = zmq.asyncio.Context()
        tasks = [asyncio.create_task(follow_publisher(
            context, endpoint, f"kv@e{i}", PublisherStream(
                f"e{i}", self._applier(KeyTranslator(f"e{i}", MODEL, BLOCK)), lambda: None,
                ReplayClient(context, replay))))
            for i, (endpoint, replay) in enumerate(self.endpoints)]
        self.ready.set()
        while not self.done.is_set():
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        context.term()

    def _applier(self, translator: KeyTranslator) -> Any:
        def apply(batch: EventBatch) -> None:
            for event in translator.translate(batch.events):
                self.index.apply(event)
            self.applied += len(batch.events)
            if self.applied >= self.total:
                self.done.set()
        return apply

    def wait(self) -> PrefixIndex:
        """The index once every event is in it."""
        if not self.done.wait(600):
            raise RuntimeError(f"only {self.applied} of {self.total} events arrived")
        return self.index

    def close(self) -> None:
        """Stop the loop's thread (after the timed part)."""
        self.done.set()
        self._thread.join(30)


def ingestion(run: Any, engines: int, requests: int, chain: int) -> dict[str, Any]:
    """Anchor (index apply alone) against the ZMQ path, for ``engines`` publishers."""
    per_engine = [engine_batches(i, requests, chain) for i in range(engines)]
    total = sum(len(batch) for batches in per_engine for batch in batches)
    translated = []
    for i, batches in enumerate(per_engine):
        translator = KeyTranslator(f"e{i}", MODEL, BLOCK)
        translated += [e for batch in batches for e in translator.translate(batch)]

    def anchor() -> Any:
        def body() -> Any:
            index = PrefixIndex(max_entries=None)
            for event in translated:
                index.apply(event)
            return _digest(index)
        return body

    leftovers: list[Any] = []

    def candidate() -> Any:
        # Fresh publishers and consumer per repetition, connected before the timed part;
        # the previous repetition's are closed here, untimed.
        while leftovers:
            leftovers.pop().close()
        publishers = Publishers(engines, requests, chain)
        consumer = Consumer(publishers.endpoints, total)
        leftovers.extend([publishers, consumer])

        def body() -> Any:
            publishers.go()
            return _digest(consumer.wait())
        return body

    results = {}
    for name in run.conditions:
        with harness.cpu_condition(name) as cond:
            results[name] = harness.compare(
                [harness.Side("index-apply", anchor, ops=total),
                 harness.Side("zmq-to-index", candidate, ops=total)],
                repeats=run.repeats, warmup=run.warmup, condition=cond,
                tag=f"ingest-{engines}")
    while leftovers:
        leftovers.pop().close()
    return {"engines": engines, "events": total, "comparisons": results}


# -- lag to routing ------------------------------------------------------------------


def _fabric(tmp: Path) -> Path:
    from topology.synth import SynthParams, synth_cluster
    path = tmp / "fabric.json"
    path.write_text(synth_cluster(SynthParams(zones=1, pods_per_zone=1, racks_per_pod=2,
                                              hosts_per_rack=1)).model_dump_json())
    return path


class LagRig:
    """A ``toposched serve`` with fake engines registered as instances."""

    def __init__(self, tmp: Path, engines: int) -> None:
        from tests.engines.fake_engine import FakeEngine
        from tests.servers import free_port
        self.engines = [FakeEngine(f"e{i}", num_blocks=100_000) for i in range(engines)]
        document = {"version": 1, "instances": [
            e.instance(gpus=[i], model=MODEL, max_requests=1_000_000).model_dump(
                mode="json", exclude_none=True) for i, e in enumerate(self.engines)]}
        (tmp / "instances.yaml").write_text(yaml.safe_dump(document))
        port = free_port()
        env = {**os.environ, "TOPOSCHED_RESERVATION_TTL_S": "1",
               "TOPOSCHED_ENGINE_SCRAPE_INTERVAL_S": "0.5"}
        self.log = (tmp / "serve.log").open("wb")
        self.serve = subprocess.Popen(
            [sys.executable, "-m", "api.cli.main", "serve", "--port", str(port),
             "--fabric", str(_fabric(tmp)), "--instances", str(tmp / "instances.yaml")],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self.seq: dict[str, int] = {}
        self._wait_up()

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                views = self.http.get("/v1/instances").json()["instances"]
                if views and all(v["status"]["state"] == "up" for v in views):
                    return
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError("the service did not bring its instances up")

    def cached_on(self, prompt: list[int], engine: str) -> bool:
        answer = self.http.post("/v1/route", json={"model": MODEL, "tokens": prompt})
        if answer.status_code != 200:
            raise RuntimeError(f"route answered {answer.status_code}: {answer.text}")
        decision = answer.json()["decision"]
        return any(decision[side]["worker"] == engine and decision[side]["cached_blocks"]
                   for side in ("prefill", "decode"))

    def trial(self, via: str, rng: random.Random) -> float:
        # Each path has its own engines: an instance's index entries follow one sequence
        # numbering (its KV-event stream's), so JSON events under its name would collide.
        half = len(self.engines) // 2
        group = self.engines[:half] if via == "zmq" else self.engines[half:]
        engine = group[rng.randrange(len(group))]
        prompt = [rng.randrange(1 << 16) for _ in range(16 * BLOCK)]
        started = time.perf_counter()
        if via == "zmq":
            engine.publisher.publish([stored(prompt, BLOCK)])
        else:
            seq = self.seq[engine.name] = self.seq.get(engine.name, 1_000_000) + 1
            self.http.post("/v1/kv-events", json={
                "kind": "block_stored", "worker": engine.name, "seq": seq, "model": MODEL,
                "block_hashes": block_hashes(prompt, BLOCK)}).raise_for_status()
        while not self.cached_on(prompt, engine.name):
            pass
        return time.perf_counter() - started

    def close(self) -> None:
        self.serve.terminate()
        self.serve.wait(30)
        self.log.close()
        for engine in self.engines:
            engine.kill()


def lag(run: Any, engines: int, trials: int) -> dict[str, Any]:
    """Lag from handing an event over to the first routing decision that uses it."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        rig = LagRig(Path(tmp), engines)
        try:
            for name in run.conditions:
                with harness.cpu_condition(name) as cond:
                    def side(via: str) -> Any:
                        def prepare() -> Any:
                            rng = random.Random(f"{via}")
                            return lambda: harness.Samples(
                                trials, [rig.trial(via, rng) for _ in range(trials)])
                        return prepare
                    results[name] = harness.compare(
                        [harness.Side("http-json", side("http")),
                         harness.Side("zmq", side("zmq"))], repeats=run.repeats,
                        warmup=run.warmup, condition=cond, tag="lag")
        finally:
            rig.close()
    return {"engines": engines, "trials_per_repetition": trials, "comparisons": results}


# -- report --------------------------------------------------------------------------


def _ingest_lines(part: dict[str, Any]) -> list[str]:
    lines = []
    for name, result in part["comparisons"].items():
        anchor, cand = result.sides["index-apply"], result.sides["zmq-to-index"]
        ratio = result.ratio("zmq-to-index", "index-apply")
        cpu_us = 1e6 * cand.cpu.median / part["events"]
        lines.append(f"| {part['engines']} | {part['events']:,} | {name} | "
                     f"{cand.rate:,.0f} | {cand.rate / part['engines']:,.0f} | "
                     f"{anchor.rate:,.0f} | {harness.fmt_ratio(ratio)} | {cpu_us:.1f} |")
    return lines


def _lag_lines(part: dict[str, Any]) -> list[str]:
    lines = []
    for name, result in part["comparisons"].items():
        for side in ("http-json", "zmq"):
            r = result.sides[side]
            lines.append(f"| {side} | {name} | {len(r.samples)} | {1e3 * r.latency(50):.2f} | "
                         f"{1e3 * r.latency(90):.2f} | {1e3 * r.latency(99):.2f} |")
    return lines


def report(env: Any, ingest: list[dict[str, Any]], lags: dict[str, Any], command: str) -> str:
    lines = ["# KV events from engines: ingestion and lag to routing", ""]
    lines += harness.environment_markdown(env, "bench/engine_events_bench.py", command)
    lines += ["", "## Ingestion: ZMQ → decode → dual-key translation → prefix index", "",
              "Anchor: the same events, already translated, applied to an index directly "
              "(the index's own cost). Ratio = candidate rate / anchor rate (< 1: what the "
              "transport, decoding and token hashing cost).", "",
              "| engines | events | condition | events/s total | events/s per engine | "
              "anchor events/s | ratio | consumer CPU µs/event |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for part in ingest:
        lines += _ingest_lines(part)
    lines += ["", "## Lag from an engine's BlockStored to a routing decision that uses it",
              "", f"{lags['engines']} fake engines registered in a `toposched serve`; "
              "probe = `POST /v1/route` in a loop (each probe is one round trip).", "",
              "| path | condition | trials | p50 ms | p90 ms | p99 ms |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += _lag_lines(lags)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser)
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=100,
                        help="request chains per engine")
    parser.add_argument("--chain-blocks", type=int, default=16)
    parser.add_argument("--lag-engines", type=int, default=4,
                        help="fake engines (half take ZMQ events, half JSON events)")
    parser.add_argument("--trials", type=int, default=50, help="lag trials per repetition")
    args = parser.parse_args()
    command = "python " + " ".join(["bench/engine_events_bench.py", *sys.argv[1:]])
    with harness.session(args) as run:
        ingest = [ingestion(run, n, args.requests, args.chain_blocks) for n in args.engines]
        lags = lag(run, args.lag_engines, args.trials)
        env = run.finish()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "engine_events.md").write_text(report(env, ingest, lags, command))
    (RESULTS / "engine_events.json").write_text(json.dumps({
        "environment": env, "ingestion": [
            {**p, "comparisons": {k: v.as_dict() for k, v in p["comparisons"].items()}}
            for p in ingest],
        "lag": {**lags, "comparisons": {k: v.as_dict() for k, v in lags["comparisons"].items()}}},
        indent=1, default=str))
    print((RESULTS / "engine_events.md").read_text())


if __name__ == "__main__":
    main()
