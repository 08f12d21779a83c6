"""The gateway as a real process in front of protocol-faithful fake engines (vLLM's
NixlConnector pull and SGLang's bootstrap dialects): legs, streaming, fallbacks, load,
disconnects, engine deaths, measurement and the decision headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engines.fakes.model import generate, prompt_tokens
from engines.instance import EngineInstance
from engines.pd import LegPlan, Timeline, protocol_for
from engines.pd.http import EngineHttp
from scheduler.prefix.hashing import block_hashes
from tests.gateway.harness import (
    HOSTS,
    MODEL,
    Engine,
    Gateway,
    start_engine,
    start_gateway,
    wait_for,
)
from tests.servers import stop_process

pytestmark = [pytest.mark.process]
LONG = "the quick brown fox jumps over the lazy dog. " * 90  # ~4,000 tokens (bytes)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A prefill (TP 2) and a decode fake (TP 1, vLLM dialect) and the gateway."""
    engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill", tp_size=2),
               start_engine("d0", host=HOSTS[0], gpu=1, role="decode", token_s=0.05)]
    gateway = start_gateway(engines, tmp_path_factory.mktemp("vllm"),
                            args=["--pd-min-uncached-tokens", "0"])
    yield gateway
    gateway.stop()


def _completion(gateway: Gateway, prompt: Any = LONG, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, **extra}
    return httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=30)


def _direct(engine_url: str, body: dict[str, Any], path: str = "/v1/completions") -> list[int]:
    answer = httpx.post(f"{engine_url}{path}", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["choices"][0]["token_ids"])


def test_a_completion_is_disaggregated_and_equals_the_direct_answer(vllm: Gateway) -> None:
    before_p, before_d = vllm.engines["p0"].state(), vllm.engines["d0"].state()
    answer = _completion(vllm)
    assert answer.status_code == 200, answer.text
    h = answer.headers
    assert (h["x-toposched-mode"], h["x-toposched-prefill"], h["x-toposched-decode"]) == \
        ("disaggregated", "p0", "d0")
    assert h["x-toposched-tier"] == "nvlink" and float(h["x-toposched-prefill-ms"]) > 0
    direct = _direct(vllm.engines["d0"].url, {"model": MODEL, "prompt": LONG, "max_tokens": 4})
    assert answer.json()["choices"][0]["token_ids"] == direct
    after_p, after_d = vllm.engines["p0"].state(), vllm.engines["d0"].state()
    assert after_p["counts"]["prefill_leg"] == before_p["counts"].get("prefill_leg", 0) + 1
    assert after_d["counts"]["transfers"] == before_d["counts"].get("transfers", 0) + 1
    assert after_d["bytes_read"] - before_d["bytes_read"] == len(LONG.encode()) * 4096
    assert "altered_params" not in after_p["counts"] and "stale_reads" not in after_p["counts"]


@pytest.mark.parametrize("limit", [6, 6.0])  # vLLM takes a whole-number float as an int
def test_a_streamed_chat_is_relayed_chunk_by_chunk(vllm: Gateway, limit: float) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": LONG}],
            "max_tokens": limit, "stream": True}
    decode = vllm.engines["d0"]
    decode.gate(False)
    with httpx.stream("POST", f"{vllm.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.headers["x-toposched-mode"] == "disaggregated"
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        # the decode engine holds the rest: the first event was not buffered
        assert decode.state()["running"] == 1
        assert vllm.load("d0")["requests"] == 1 and vllm.load("p0")["requests"] == 0
        # its KV is on the decode engine: its context counts there (the prompt and half
        # its 6 tokens: what the router prices the engine's steps with)
        assert vllm.load("d0")["context"] == len(prompt_tokens(body)) + 3
        decode.gate(True)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    tokens = [json.loads(e[6:])["choices"][0]["token_ids"][0] for e in [first, *rest[:-1]]]
    assert tokens == generate(prompt_tokens(body), 6)
    wait_for(lambda: vllm.load("d0")["requests"] == 0, "decode load released")
    assert vllm.load("d0")["context"] == 0


def test_client_disconnect_mid_stream_cancels_the_decode_leg_and_frees_load(
        vllm: Gateway) -> None:
    decode = vllm.engines["d0"]
    aborted = decode.state()["counts"].get("aborted", 0)
    body = {"model": MODEL, "prompt": LONG, "max_tokens": 200, "stream": True}
    decode.gate(False)
    try:
        with httpx.stream("POST", f"{vllm.url}/v1/completions", json=body, timeout=30) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))
        wait_for(lambda: decode.state()["counts"].get("aborted", 0) == aborted + 1,
                 "the decode engine aborted the request")
    finally:
        decode.gate(True)
    wait_for(lambda: decode.state()["counts"].get("aborted", 0) == aborted + 1,
             "the decode engine aborted the request")
    wait_for(lambda: vllm.load("d0")["requests"] == 0, "decode load released")
    assert decode.state()["running"] == 0


def test_client_disconnect_during_the_prefill_leg_cancels_it(vllm: Gateway) -> None:
    prefill, decode = vllm.engines["p0"], vllm.engines["d0"]
    aborted = prefill.state()["counts"].get("aborted", 0)
    decodes = decode.state()["counts"].get("decode_leg", 0)

    async def leave_during_prefill() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            task = asyncio.create_task(client.post(f"{vllm.url}/v1/completions", json={
                "model": MODEL, "prompt": LONG, "max_tokens": 4}))
            while (await asyncio.to_thread(prefill.state))["running"] != 1:
                await asyncio.sleep(0.02)
            task.cancel()

    prefill.gate(False)
    try:
        asyncio.run(leave_during_prefill())
        wait_for(lambda: prefill.state()["counts"].get("aborted", 0) == aborted + 1,
                 "the prefill engine aborted the request")
    finally:
        prefill.gate(True)
    wait_for(lambda: vllm.load("p0")["requests"] == 0, "prefill load released")
    assert vllm.load("d0")["requests"] == 0
    assert decode.state()["counts"].get("decode_leg", 0) == decodes


def test_prefill_4xx_passes_through(vllm: Gateway) -> None:
    answer = _completion(vllm, prompt="")
    assert answer.status_code == 400
    assert "empty" in answer.json()["error"]["message"]
    assert vllm.load("p0")["requests"] == 0 and vllm.load("d0")["requests"] == 0


@pytest.mark.parametrize("limit", [{"max_tokens": 10 ** 400},
                                   {"max_completion_tokens": 10 ** 400, "max_tokens": 4}])
def test_an_output_limit_past_a_double_reaches_the_engine(vllm: Gateway,
                                                          limit: dict[str, int]) -> None:
    # the gateway prices the request's context with the limit; the engine judges it
    # (here: the empty prompt's 400), not a 500 from the pricing
    answer = _completion(vllm, prompt="", **limit)
    assert answer.status_code == 400, answer.text
    assert vllm.load("p0")["requests"] == 0 and vllm.load("d0")["requests"] == 0


def test_decode_already_holding_the_prefix_runs_decode_only(vllm: Gateway) -> None:
    prompt = "another prompt, this one held by the decode engine. " * 80
    held = block_hashes(prompt_tokens({"prompt": prompt}), 16)
    event = {"kind": "block_stored", "worker": "d0", "seq": 1, "block_hashes": held,
             "model": MODEL}
    assert httpx.post(f"{vllm.url}/v1/kv-events", json=event).status_code == 200
    prefills = vllm.engines["p0"].state()["counts"]["prefill_leg"]
    answer = _completion(vllm, prompt=prompt)
    assert answer.headers["x-toposched-mode"] == "decode-only"
    assert f"decode holds {len(held) * 16} of" in answer.headers["x-toposched-reason"]
    assert vllm.engines["p0"].state()["counts"]["prefill_leg"] == prefills


def test_a_decode_leg_past_the_lease_goes_decode_only(vllm: Gateway) -> None:
    """The vLLM legs against the real fakes: with a lease shorter than the margin kept in
    hand, the prefill's parameters are never sent (the blocks may be gone)."""
    p0, d0 = (_endpoint(vllm.engines[n]) for n in ("p0", "d0"))
    body = {"model": MODEL, "prompt": LONG, "max_tokens": 2}
    plan = LegPlan(path="/v1/completions", body=body, request_id="lease-1", decode=d0,
                   prefill=p0, lease_s=0.5)
    transfers = vllm.engines["d0"].state()["counts"].get("transfers", 0)

    async def run() -> tuple[int, Timeline]:
        timeline = Timeline()
        client = EngineHttp(connect_timeout_s=10, read_timeout_s=30)
        answer = await protocol_for("vllm").open(client, plan, timeline)
        await answer.response.read()
        await answer.aclose()
        await client.aclose()
        return answer.status_code, timeline

    status, timeline = asyncio.run(run())
    assert status == 200 and not timeline.disaggregated
    assert timeline.fallback is not None and "lease" in timeline.fallback
    assert vllm.engines["d0"].state()["counts"].get("transfers", 0) == transfers


def test_a_prefill_refusal_is_relayed_whole(vllm: Gateway) -> None:
    """The prefill leg's 4xx (read whole, not streamed) reaches the client as the
    engine's answer, whichever route the gateway took for the request."""
    p0, d0 = (_endpoint(vllm.engines[n]) for n in ("p0", "d0"))
    plan = LegPlan(path="/v1/completions", body={"model": MODEL, "prompt": "",
                                                 "max_tokens": 2},
                   request_id="refused-1", decode=d0, prefill=p0, lease_s=30)

    async def run() -> tuple[int, bytes]:
        client = EngineHttp(connect_timeout_s=10, read_timeout_s=30)
        answer = await protocol_for("vllm").open(client, plan, Timeline())
        body = b"".join([chunk async for chunk in answer.chunks()])
        await answer.aclose()
        await client.aclose()
        return answer.status_code, body

    status, body = asyncio.run(run())
    assert status == 400
    assert "empty" in json.loads(body)["error"]["message"]


def _endpoint(engine: Engine) -> EngineInstance:
    return EngineInstance.model_validate(engine.instance)


def test_engine_deaths_end_cleanly_and_leave_routing(tmp_path: Path) -> None:
    engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
               start_engine("d0", host=HOSTS[0], gpu=1, role="decode"),
               start_engine("d1", host=HOSTS[0], gpu=2, role="decode")]
    # Only the legs may find the deaths: a health scrape noticing p0 first would make
    # the gateway prefill locally without ever meeting the corpse (a race under load).
    quiet = {"TOPOSCHED_ENGINE_SCRAPE_INTERVAL_S": "300",
             "TOPOSCHED_ENGINE_STALE_AFTER_S": "3600"}
    gateway = start_gateway(engines, tmp_path, env=quiet,
                            args=["--pd-min-uncached-tokens", "0"])
    try:
        _prefill_dies(gateway)
        _decode_dies_mid_stream(gateway)
    finally:
        gateway.stop()


def _prefill_dies(gateway: Gateway) -> None:
    gateway.engines["p0"].kill()
    ids = prompt_tokens({"prompt": LONG})  # token ids: the prefill leg meets the corpse
    answer = _completion(gateway, prompt=ids)
    assert answer.status_code == 200
    assert answer.headers["x-toposched-mode"] == "decode-only"
    assert "unreachable" in answer.headers["x-toposched-reason"]
    decode = gateway.engines[answer.headers["x-toposched-decode"]]
    expected = _direct(decode.url, {"model": MODEL, "prompt": ids, "max_tokens": 4})
    assert answer.json()["choices"][0]["token_ids"] == expected
    assert _in_routing(gateway) == {"p0": False, "d0": True, "d1": True}
    assert _completion(gateway).headers["x-toposched-prefill"] == "-"
    assert all(gateway.load(n)["requests"] == 0 for n in ("p0", "d0", "d1"))


def _decode_dies_mid_stream(gateway: Gateway) -> None:
    for engine in gateway.engines.values():
        if engine.process.poll() is None:
            engine.gate(False)
    body = {"model": MODEL, "prompt": LONG, "max_tokens": 100, "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/completions", json=body, timeout=30) as r:
        victim = r.headers["x-toposched-decode"]
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        gateway.engines[victim].kill()
        rest = [line for line in lines if line.startswith("data: ")]
    assert "error" in json.loads(rest[-1][6:])
    wait_for(lambda: gateway.load(victim)["requests"] == 0, "decode load released")
    survivor = ({"d0", "d1"} - {victim}).pop()
    gateway.engines[survivor].gate(True)
    assert _in_routing(gateway)[victim] is False
    again = _completion(gateway)
    assert again.status_code == 200 and again.headers["x-toposched-decode"] == survivor
    gateway.engines[survivor].kill()
    gone = _completion(gateway)
    assert gone.status_code == 503
    assert gone.headers["content-type"] == "application/problem+json"
    assert all(gateway.load(n)["requests"] == 0 for n in ("p0", "d0", "d1"))


def _in_routing(gateway: Gateway) -> dict[str, bool]:
    health = httpx.get(f"{gateway.url}/v1/gateway/health").json()
    return {e["name"]: e["in_routing"] for e in health["engines"]}


def test_sglang_pair_meets_in_a_bootstrap_room(tmp_path: Path) -> None:
    engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill", flavour="sglang"),
               start_engine("d0", host=HOSTS[0], gpu=1, role="decode", flavour="sglang")]
    gateway = start_gateway(engines, tmp_path, args=["--pd-min-uncached-tokens", "0"])
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": LONG}],
                "max_tokens": 5, "stream": True}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body,
                          timeout=30) as r:
            assert r.headers["x-toposched-mode"] == "disaggregated"
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        tokens = [json.loads(e[6:])["choices"][0]["token_ids"][0] for e in events[:-1]]
        assert tokens == generate(prompt_tokens(body), 5)
        assert engines[0].state()["counts"]["prefill_leg"] == 1
        assert engines[1].state()["counts"]["transfers"] == 1
        # a short prompt would be decode-only, but a decode-mode SGLang server cannot
        # run alone: the pair is kept
        short = _completion(gateway, prompt="hi")
        assert short.status_code == 200
        assert engines[0].state()["counts"]["prefill_leg"] == 2
    finally:
        gateway.stop()


def test_models_errors_and_metrics(vllm: Gateway) -> None:
    models = httpx.get(f"{vllm.url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    unknown = httpx.post(f"{vllm.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404
    bad = httpx.post(f"{vllm.url}/v1/chat/completions", json={"model": MODEL})
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "body.messages"
    assert _completion(vllm).status_code == 200
    metrics = httpx.get(f"{vllm.url}/metrics").text
    assert 'toposched_gateway_phase_seconds_count{phase="prefill",tier="nvlink"}' in metrics
    assert 'toposched_gateway_requests_total{mode="disaggregated",outcome="ok"}' in metrics


def test_a_loopback_side_channel_across_hosts_is_refused_at_start(tmp_path: Path) -> None:
    engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
               start_engine("d0", host=HOSTS[1], gpu=0, role="decode")]
    try:
        with pytest.raises(RuntimeError, match="exited with 2"):
            start_gateway(engines, tmp_path)
        log = (tmp_path / "gateway.log").read_text()
        assert "instances[0].nixl_side_channel" in log and "not reachable" in log
        assert "Traceback" not in log
    finally:
        for engine in engines:
            engine.kill()


def _samples(gateway: Gateway, name: str, **labels: str) -> float:
    """Sum of the gateway's samples called ``name`` whose labels include ``labels``."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_the_decode_engines_nixl_figures_are_joined_by_the_pairs_tier(vllm: Gateway) -> None:
    decode = vllm.engines["d0"]
    phase = {"phase": "nixl_transfer", "tier": "nvlink"}
    count = "toposched_gateway_phase_seconds_count"
    before = (decode.state()["counts"].get("transfers", 0), _samples(vllm, count, **phase),
              _samples(vllm, "toposched_transfer_latency_seconds_count", tier="nvlink"),
              _samples(vllm, "toposched_gateway_kv_bytes_total", tier="nvlink"),
              decode.state()["bytes_read"])
    assert _completion(vllm).headers["x-toposched-mode"] == "disaggregated"
    moved = decode.state()["counts"]["transfers"] - before[0]
    assert moved == 1
    # the next scrape of the decode engine's /metrics joins its transfer to this pair
    wait_for(lambda: _samples(vllm, count, **phase) == before[1] + moved,
             "a tier-labelled nixl_transfer sample")
    assert _samples(vllm, "toposched_transfer_latency_seconds_count", tier="nvlink") == \
        before[2] + moved
    assert _samples(vllm, "toposched_gateway_kv_bytes_total", tier="nvlink") - before[3] == \
        decode.state()["bytes_read"] - before[4] > 0
    assert "toposched_engine_nixl_unattributed_transfers_total{" not in \
        httpx.get(f"{vllm.url}/metrics").text


def test_the_registry_alone_says_what_is_in_routing(tmp_path: Path) -> None:
    """An engine the gateway could not reach is out of routing until its /health answers
    again; an instance registered through the API is routed to at once."""
    engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
               start_engine("d0", host=HOSTS[0], gpu=1, role="decode")]
    gateway = start_gateway(engines, tmp_path, args=["--pd-min-uncached-tokens", "0"])
    try:
        port = engines[1].port
        engines[1].kill()
        assert _completion(gateway).status_code == 503
        assert _in_routing(gateway) == {"p0": True, "d0": False}
        gateway.engines["d0"] = start_engine("d0", host=HOSTS[0], gpu=1, role="decode",
                                             port=port)
        wait_for(lambda: _in_routing(gateway)["d0"], "d0 back in routing")
        assert _completion(gateway).status_code == 200
        extra = start_engine("d1", host=HOSTS[0], gpu=2, role="decode")
        gateway.engines["d1"] = extra
        put = httpx.put(f"{gateway.url}/v1/instances/d1", json=extra.instance, timeout=10)
        assert put.status_code == 201, put.text
        gateway.engines["d0"].kill()
        wait_for(lambda: not _in_routing(gateway)["d0"] and _in_routing(gateway)["d1"],
                 "d0 out and d1 in routing (the registry's scrapes)")
        answer = _completion(gateway)
        assert answer.status_code == 200 and answer.headers["x-toposched-decode"] == "d1"
        assert httpx.delete(f"{gateway.url}/v1/instances/d1", timeout=10).status_code == 204
        assert "d1" not in _in_routing(gateway)
        assert _completion(gateway).status_code == 503
    finally:
        gateway.stop()


def test_the_fake_prefill_never_hands_out_a_leased_block_twice() -> None:
    """A pool of 8 blocks, two 4-block prompts leased: a third prefill waits (a ring would
    have overwritten the first lease), takes the blocks the first lease's read freed,
    and the second lease still reads its own tokens."""
    engine = start_engine("p0", host=HOSTS[0], gpu=0, role="prefill", num_blocks=8)
    try:
        prompts = [[100 + 64 * k + i for i in range(64)] for k in range(3)]

        def prefill(prompt: list[int]) -> dict[str, Any]:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 1,
                    "kv_transfer_params": {"do_remote_decode": True}}
            answer = httpx.post(f"{engine.url}/v1/completions", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            params: dict[str, Any] = answer.json()["kv_transfer_params"]
            return params

        def read(params: dict[str, Any]) -> list[int]:
            answer = httpx.post(f"{engine.url}/_fake/nixl/read", json={"params": params},
                                timeout=30)
            return list(answer.json()["tokens"])

        first, second = prefill(prompts[0]), prefill(prompts[1])
        ids = [first["remote_block_ids"][0], second["remote_block_ids"][0]]
        assert sorted(ids[0] + ids[1]) == list(range(8))
        with ThreadPoolExecutor(1) as pool:
            third = pool.submit(prefill, prompts[2])
            wait_for(lambda: engine.state()["counts"].get("waited_for_blocks") == 1,
                     "the third prefill to wait for blocks")
            assert not third.done()
            assert read(first) == prompts[0]
            assert sorted(third.result(timeout=30)["remote_block_ids"][0]) == sorted(ids[0])
        assert read(second) == prompts[1]
        assert engine.state()["counts"].get("stale_reads", 0) == 0
    finally:
        stop_process(engine.process)
