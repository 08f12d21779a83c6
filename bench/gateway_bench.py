"""The gateway's cost per request and its throughput, against vLLM's two-leg proxy flow.

One run starts a prefill and a decode fake engine (``engines.fakes``, vLLM dialect, no
delays: the fakes answer in well under a millisecond, so the gateway's own work
dominates) and one ``toposched gateway`` over them (in memory, a two-host synthetic
fabric, ``--pd-min-uncached-tokens 0``). Every request is a streamed completion whose
prompt is token ids (no tokenizer hop), different for every request.

* **anchor ``direct``** — the client runs vLLM's reference two-leg proxy flow itself
  (toy_proxy_server.py): the prefill leg to the prefill engine (``kv_transfer_params``
  asking for a remote decode, ``max_tokens: 1``, no stream), then the decode leg to the
  decode engine with the returned parameters, streamed and read to the end;
* **candidate ``gateway``** — the same request to the gateway, which picks the pair,
  reserves load, runs the same two legs and relays the stream.

Latency: requests one at a time; the added latency is the gateway's percentile minus
the direct flow's, both pooled over alternating repetitions. Throughput: the same
requests with ``--concurrency`` in flight; requests per second and the gateway
process's CPU per request (``/proc/PID/stat``). Every answer's tokens are compared
between the sides, and every gateway answer must say ``x-toposched-mode:
disaggregated`` (a gateway that skipped a leg would look faster). Writes
bench/results/gateway.{md,json}.

    .venv/bin/python bench/gateway_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from engines.pd.vllm import prefill_body  # noqa: E402
from tests.gateway.harness import (  # noqa: E402
    HOSTS,
    MODEL,
    Gateway,
    start_engine,
    start_gateway,
)

RESULTS = ROOT / "bench" / "results"
PROMPT_TOKENS = 1024
MAX_TOKENS = 8
#: Issue 13's bound on the added p50 latency.
TARGET_S = 1e-3


def _requests(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"model": MODEL, "prompt": [rng.randrange(10, 30_000) for _ in range(PROMPT_TOKENS)],
             "max_tokens": MAX_TOKENS, "stream": True} for _ in range(count)]


def _tokens(sse: bytes) -> list[int]:
    out: list[int] = []
    for line in sse.split(b"\n"):
        if line.startswith(b"data: {"):
            out.extend(json.loads(line[6:])["choices"][0]["token_ids"])
    return out


async def _direct(client: httpx.AsyncClient, gw: Gateway, body: dict[str, Any]) -> list[int]:
    """vLLM's reference proxy flow, run by the client itself."""
    p, d = gw.engines["p0"].url, gw.engines["d0"].url
    headers = {"X-Request-Id": os.urandom(8).hex()}
    first = await client.post(f"{p}/v1/completions", json=prefill_body(body), headers=headers)
    first.raise_for_status()
    decode = {**body, "kv_transfer_params": first.json()["kv_transfer_params"]}
    async with client.stream("POST", f"{d}/v1/completions", json=decode,
                             headers=headers) as answer:
        return _tokens(await answer.aread())


async def _via_gateway(client: httpx.AsyncClient, gw: Gateway, body: dict[str, Any]
                       ) -> list[int]:
    async with client.stream("POST", f"{gw.url}/v1/completions", json=body) as answer:
        if answer.headers.get("x-toposched-mode") != "disaggregated":
            raise RuntimeError(f"gateway did not disaggregate: {dict(answer.headers)}")
        return _tokens(await answer.aread())


Flow = Callable[[httpx.AsyncClient, Gateway, dict[str, Any]], Any]


def _sequential(gw: Gateway, flow: Flow, requests: list[dict[str, Any]]
                ) -> Callable[[], harness.Samples]:
    def body() -> harness.Samples:
        async def run() -> harness.Samples:
            outputs, samples = [], []
            async with httpx.AsyncClient(timeout=30) as client:
                for request in requests:
                    start = time.perf_counter()
                    outputs.append(await flow(client, gw, request))
                    samples.append(time.perf_counter() - start)
            return harness.Samples(outputs, samples)
        return asyncio.run(run())
    return body


def _concurrent(gw: Gateway, flow: Flow, requests: list[dict[str, Any]], concurrency: int,
                cpu: dict[str, list[float]], name: str) -> Callable[[], list[list[int]]]:
    def body() -> list[list[int]]:
        async def run() -> list[list[int]]:
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                gate = asyncio.Semaphore(concurrency)

                async def one(request: dict[str, Any]) -> list[int]:
                    async with gate:
                        result: list[int] = await flow(client, gw, request)
                        return result
                return list(await asyncio.gather(*map(one, requests)))
        before = _cpu_seconds(gw.process.pid)
        outputs = asyncio.run(run())
        cpu[name].append((_cpu_seconds(gw.process.pid) - before) / len(requests))
        return outputs
    return body


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_arguments(parser, repeats=7, warmup=1)
    parser.add_argument("--requests", type=int, default=200, help="latency requests per side")
    parser.add_argument("--load-requests", type=int, default=400,
                        help="throughput requests per side and repetition")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="toposched-gw-bench-") as tmp, \
            harness.session(args, tag="gateway") as run:
        engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
                   start_engine("d0", host=HOSTS[0], gpu=1, role="decode")]
        gw = start_gateway(engines, Path(tmp), args=["--pd-min-uncached-tokens", "0"])
        try:
            results = _measure(gw, args, run)
        finally:
            gw.stop()
        env = run.finish()
    _report(results, env, args)


def _measure(gw: Gateway, args: argparse.Namespace, run: harness.Session) -> dict[str, Any]:
    latency, load = _requests(args.requests, 1), _requests(args.load_requests, 2)
    out: dict[str, Any] = {}
    for condition in run.conditions:
        cpu: dict[str, list[float]] = {"direct": [], "gateway": []}
        with harness.cpu_condition(condition) as cond:
            lat = harness.compare([
                harness.Side("direct", lambda: _sequential(gw, _direct, latency),
                             ops=len(latency)),
                harness.Side("gateway", lambda: _sequential(gw, _via_gateway, latency),
                             ops=len(latency))],
                repeats=run.repeats, warmup=run.warmup, condition=cond, tag="gateway")
            thr = harness.compare([
                harness.Side("direct", functools.partial(
                    _concurrent, gw, _direct, load, args.concurrency, cpu, "direct"),
                    ops=len(load)),
                harness.Side("gateway", functools.partial(
                    _concurrent, gw, _via_gateway, load, args.concurrency, cpu, "gateway"),
                    ops=len(load))],
                repeats=run.repeats, warmup=run.warmup, condition=cond, tag="gateway")
        out[condition] = {"latency": lat, "throughput": thr,
                          "gateway_cpu_per_request_s": cpu["gateway"][run.warmup:]}
    return out


def _report(results: dict[str, Any], env: dict[str, Any], args: argparse.Namespace) -> None:
    command = " ".join(["flock", str(harness.LOCK_PATH), ".venv/bin/python",
                        "bench/gateway_bench.py", *sys.argv[1:]])
    data: dict[str, Any] = {"environment": env, "command": command,
                            "conditions": list(results), "prompt_tokens": PROMPT_TOKENS,
                            "max_tokens": MAX_TOKENS, "concurrency": args.concurrency,
                            "target_added_p50_s": TARGET_S}
    lines = ["# Gateway: added latency and throughput (fake engines)", "",
             *harness.environment_markdown(env, "bench/gateway_bench.py", command),
             f"Work: streamed completions, {PROMPT_TOKENS}-token prompts as token ids, "
             f"{MAX_TOKENS} output tokens, through a prefill and a decode fake engine "
             "(vLLM dialect, no delays). Anchor: the client runs vLLM's reference two-leg "
             "proxy flow itself; candidate: the same request through `toposched gateway` "
             "(every answer checked disaggregated; tokens compared between the sides).", ""]
    for condition, found in results.items():
        lat, thr = found["latency"], found["throughput"]
        d, g = lat.sides["direct"], lat.sides["gateway"]
        cpu = harness.Stats(tuple(found["gateway_cpu_per_request_s"]))
        lines += [f"## {condition}", "", harness.condition_line(lat.condition), "",
                  "| per request | direct two-leg | through the gateway | added |",
                  "| --- | --- | --- | --- |"]
        for q in (50, 90, 99):
            added = g.latency(q) - d.latency(q)
            lines.append(f"| p{q} | {d.latency(q) * 1e3:.2f} ms | {g.latency(q) * 1e3:.2f} ms "
                         f"| **{added * 1e3:+.2f} ms** |")
        added50 = g.latency(50) - d.latency(50)
        lines += ["", f"Target (issue 13, added p50 ≤ {TARGET_S * 1e3:g} ms): **"
                  f"{'met' if added50 <= TARGET_S else 'not met'}** ({added50 * 1e3:+.2f} ms). "
                  "Where the gateway's CPU goes: docs/dev-notes.md."]
        td, tg = thr.sides["direct"], thr.sides["gateway"]
        lines += ["", f"Throughput with {args.concurrency} in flight: direct "
                  f"{harness.fmt_rate(td.rate_stats())} req/s, gateway "
                  f"{harness.fmt_rate(tg.rate_stats())} req/s (gateway / direct "
                  f"{harness.fmt_ratio(thr.ratio('gateway', 'direct'))}); gateway process "
                  f"CPU {cpu.median * 1e3:.2f} ms per request [{cpu.min * 1e3:.2f}–"
                  f"{cpu.max * 1e3:.2f}].", ""]
        data[condition] = {"latency": lat.as_dict(), "throughput": thr.as_dict(),
                           "gateway_cpu_per_request_s": cpu.as_dict()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    harness.write_json(RESULTS / "gateway.json", data)
    (RESULTS / "gateway.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
