"""The gateway's engine-leg HTTP client against httpx (and aiohttp, when importable).

Why ``engines/pd/http.py`` is hand-written: each side runs the same two-leg requests
against a prefill and a decode fake engine (``engines.fakes``, vLLM dialect, no
delays) from one uvloop event loop, one request at a time — the prefill leg (a
1,024-token prompt, ``max_tokens: 1``, JSON answer parsed for ``kv_transfer_params``),
then the decode leg streamed to its end. The figure that matters is the client
process's CPU per request (both legs, bodies' JSON encoding included): it is what the
gateway pays per request. The decoded tokens are compared between the sides.

* **anchor ``httpx``** — ``httpx.AsyncClient`` (what the gateway used before);
* ``aiohttp`` — ``aiohttp.ClientSession``, only when aiohttp is importable (it is not
  a toposched dependency; the report says whether it ran);
* **candidate ``toposched``** — :class:`engines.pd.http.EngineHttp`.

Writes bench/results/leg_client.{md,json}.

    .venv/bin/python bench/leg_client_bench.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvloop

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.gateway_bench import _requests, _tokens  # noqa: E402
from engines.pd.http import EngineHttp  # noqa: E402
from engines.pd.legs import encode  # noqa: E402
from engines.pd.vllm import prefill_body  # noqa: E402
from tests.gateway.harness import HOSTS, start_engine  # noqa: E402
from tests.servers import stop_process  # noqa: E402

RESULTS = ROOT / "bench" / "results"
Flow = Callable[[str, str, list[dict[str, Any]]], Awaitable[list[list[int]]]]


async def _httpx(p: str, d: str, requests: list[dict[str, Any]]) -> list[list[int]]:
    out = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i, body in enumerate(requests):
            headers = {"X-Request-Id": str(i), "Content-Type": "application/json"}
            first = await client.post(p, content=encode(prefill_body(body)), headers=headers)
            kv = msgspec.json.decode(first.content)["kv_transfer_params"]
            decode = encode({**body, "kv_transfer_params": kv})
            async with client.stream("POST", d, content=decode, headers=headers) as answer:
                out.append(_tokens(b"".join([c async for c in answer.aiter_raw()])))
    return out


async def _aiohttp(p: str, d: str, requests: list[dict[str, Any]]) -> list[list[int]]:
    import aiohttp  # not a dependency: this side runs only where it is installed

    out = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        for i, body in enumerate(requests):
            headers = {"X-Request-Id": str(i), "Content-Type": "application/json"}
            async with client.post(p, data=encode(prefill_body(body)),
                                   headers=headers) as first:
                kv = msgspec.json.decode(await first.read())["kv_transfer_params"]
            decode = encode({**body, "kv_transfer_params": kv})
            async with client.post(d, data=decode, headers=headers) as answer:
                out.append(_tokens(b"".join([c async for c in answer.content.iter_any()])))
    return out


async def _toposched(p: str, d: str, requests: list[dict[str, Any]]) -> list[list[int]]:
    out = []
    client = EngineHttp(connect_timeout_s=10, read_timeout_s=30)
    for i, body in enumerate(requests):
        headers = {"X-Request-Id": str(i)}
        first = await client.post(p, encode(prefill_body(body)), headers)
        kv = msgspec.json.decode(await first.read())["kv_transfer_params"]
        answer = await client.post(d, encode({**body, "kv_transfer_params": kv}), headers)
        out.append(_tokens(b"".join([c async for c in answer.chunks()])))
    await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_arguments(parser, repeats=5, warmup=1)
    parser.add_argument("--requests", type=int, default=300, help="requests per side")
    args = parser.parse_args()
    flows: dict[str, Flow] = {"httpx": _httpx, "toposched": _toposched}
    if importlib.util.find_spec("aiohttp") is not None:
        flows = {"httpx": _httpx, "aiohttp": _aiohttp, "toposched": _toposched}
    with tempfile.TemporaryDirectory(prefix="toposched-legs-"), \
            harness.session(args, packages=["httpx", "aiohttp", "httptools"],
                            tag="legs") as run:
        engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
                   start_engine("d0", host=HOSTS[0], gpu=1, role="decode")]
        p, d = (f"{e.url}/v1/completions" for e in engines)
        requests = _requests(args.requests, 3)
        results = {}
        try:
            for condition in run.conditions:
                with harness.cpu_condition(condition) as cond:
                    results[condition] = harness.compare(
                        [harness.Side(name, _body(flow, p, d, requests), ops=len(requests))
                         for name, flow in flows.items()],
                        repeats=run.repeats, warmup=run.warmup, condition=cond, tag="legs")
        finally:
            for engine in engines:
                stop_process(engine.process)
        env = run.finish()
    _report(results, env, list(flows))


def _body(flow: Flow, p: str, d: str, requests: list[dict[str, Any]]
          ) -> Callable[[], Callable[[], list[list[int]]]]:
    return lambda: lambda: uvloop.run(flow(p, d, requests))


def _report(results: dict[str, harness.Comparison], env: dict[str, Any],
            sides: list[str]) -> None:
    command = " ".join(["flock", str(harness.LOCK_PATH), ".venv/bin/python",
                        "bench/leg_client_bench.py", *sys.argv[1:]])
    lines = ["# Engine-leg HTTP client: CPU per two-leg request", "",
             *harness.environment_markdown(env, "bench/leg_client_bench.py", command),
             "Work: one request at a time from one uvloop loop: a 1,024-token prefill leg "
             "(JSON answer parsed), then the decode leg streamed to its end (8 tokens), "
             "against fake engines (vLLM dialect, no delays); decoded tokens compared "
             "between the sides. aiohttp "
             + ("ran (installed here; not a toposched dependency)." if "aiohttp" in sides
                else "did not run (not installed)."), ""]
    data: dict[str, Any] = {"environment": env, "command": command, "sides": sides}
    for condition, found in results.items():
        lines += [f"## {condition}", "", harness.condition_line(found.condition), "",
                  "| client | CPU per request (both legs) | wall per request | "
                  "httpx's CPU / this one's (paired) |", "| --- | --- | --- | --- |"]
        for name, side in found.sides.items():
            cpu = harness.Stats(tuple(v / side.ops for v in side.cpu.values))
            wall = harness.Stats(tuple(v / side.ops for v in side.wall.values))
            ratio = harness.fmt_ratio(found.cpu_ratio(name, "httpx"))
            lines.append(f"| {name} | {cpu.median * 1e3:.3f} ms [{cpu.min * 1e3:.3f}–"
                         f"{cpu.max * 1e3:.3f}] | {wall.median * 1e3:.2f} ms | {ratio} |")
        lines.append("")
        data[condition] = found.as_dict()
    RESULTS.mkdir(parents=True, exist_ok=True)
    harness.write_json(RESULTS / "leg_client.json", data)
    (RESULTS / "leg_client.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
