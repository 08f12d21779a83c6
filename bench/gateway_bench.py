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
process's CPU per request (``/proc/PID/stat``). ``--baseline-tree DIR`` adds a third
side, ``baseline``: the same gateway command run from another checkout (say, main
before a change) over the same engines, alternating with the others, for a paired
before/after figure on a machine whose load moves. Every answer's tokens are compared
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
    parser.add_argument("--baseline-tree", type=Path,
                        help="also run the gateway of this checkout (a paired baseline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="toposched-gw-bench-") as tmp, \
            harness.session(args, tag="gateway") as run:
        engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
                   start_engine("d0", host=HOSTS[0], gpu=1, role="decode")]
        gw_args = ["--pd-min-uncached-tokens", "0"]
        gw = start_gateway(engines, Path(tmp), args=gw_args)
        base = None
        try:
            if args.baseline_tree is not None:
                (Path(tmp) / "baseline").mkdir()
                base = start_gateway(engines, Path(tmp) / "baseline", args=gw_args,
                                     root=args.baseline_tree.resolve())
                base.engines = {}  # the engines are stopped once, with ``gw``
            results = _measure(gw, base, args, run)
        finally:
            if base is not None:
                base.stop()
            gw.stop()
        env = run.finish()
    _report(results, env, args)


def _measure(gw: Gateway, base: Gateway | None, args: argparse.Namespace,
             run: harness.Session) -> dict[str, Any]:
    latency, load = _requests(args.requests, 1), _requests(args.load_requests, 2)
    gateways = {"gateway": gw, **({"baseline": base} if base is not None else {})}
    out: dict[str, Any] = {}
    for condition in run.conditions:
        cpu: dict[str, list[float]] = {name: [] for name in ("direct", *gateways)}
        with harness.cpu_condition(condition) as cond:
            lat = harness.compare([
                harness.Side("direct", functools.partial(_sequential, gw, _direct, latency),
                             ops=len(latency)),
                *(harness.Side(name, functools.partial(_sequential, g, _via_gateway, latency),
                               ops=len(latency)) for name, g in gateways.items())],
                repeats=run.repeats, warmup=run.warmup, condition=cond, tag="gateway")
            thr = harness.compare([
                harness.Side("direct", functools.partial(
                    _concurrent, gw, _direct, load, args.concurrency, cpu, "direct"),
                    ops=len(load)),
                *(harness.Side(name, functools.partial(
                    _concurrent, g, _via_gateway, load, args.concurrency, cpu, name),
                    ops=len(load)) for name, g in gateways.items())],
                repeats=run.repeats, warmup=run.warmup, condition=cond, tag="gateway")
        out[condition] = {"latency": lat, "throughput": thr,
                          **{f"{name}_cpu_per_request_s": cpu[name][run.warmup:]
                             for name in gateways}}
    return out


def _baseline_lines(found: dict[str, Any], tree: Path) -> list[str]:
    """The paired before/after lines: this checkout's gateway against ``tree``'s."""
    lat, thr = found["latency"], found["throughput"]
    d, g, b = (lat.sides[name] for name in ("direct", "gateway", "baseline"))
    cpu = harness.Stats(tuple(found["baseline_cpu_per_request_s"]))
    added = [(q, b.latency(q) - d.latency(q), g.latency(q) - d.latency(q)) for q in (50, 90)]
    return [f"Paired baseline (the gateway of `{tree}`, alternating with the sides above "
            "over the same engines): added " + ", ".join(
                f"p{q} {was * 1e3:+.2f} ms before, {now * 1e3:+.2f} ms now"
                for q, was, now in added)
            + f"; throughput this / baseline {harness.fmt_ratio(thr.ratio('gateway', 'baseline'))}"
            f"; baseline gateway CPU {cpu.median * 1e3:.2f} ms per request "
            f"[{cpu.min * 1e3:.2f}–{cpu.max * 1e3:.2f}].", ""]


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
        if "baseline" in lat.sides:
            lines += _baseline_lines(found, args.baseline_tree)
            data[condition]["baseline_cpu_per_request_s"] = harness.Stats(
                tuple(found["baseline_cpu_per_request_s"])).as_dict()
    RESULTS.mkdir(parents=True, exist_ok=True)
    harness.write_json(RESULTS / "gateway.json", data)
    (RESULTS / "gateway.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
