"""The gateway in front of REAL vLLM engines (CPU build, NixlConnector over host memory):
disaggregated for real (the decode engine's NIXL byte counter grows by the prompt's KV
bytes), tokens equal to one engine serving the same request with a cold cache, and
prefill death, decode death and client disconnect each ending cleanly.

Engines come from the session-wide harness (engines/launch.py through
tests/engines/vllm_harness.py: the shared P/D pair is never killed here; the engines that
die are started for the test)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engines.vllm_fixtures import VllmPair
from tests.engines.vllm_harness import MODEL_NAME, EngineFleet, EngineOptions, VllmEngine
from tests.gateway.harness import (
    HOSTS,
    Gateway,
    no_local_prefill_policy,
    start_gateway_for,
    wait_for,
)

pytestmark = [pytest.mark.engine, pytest.mark.process]
#: KV bytes per token of the tiny model: K and V × 2 layers × 2 KV heads × 64 × float32.
KV_BYTES_PER_TOKEN = 2 * 2 * 2 * 64 * 4
BLOCK_TOKENS = 32
GREEDY = {"temperature": 0.0, "max_tokens": 12}
#: Output tokens of a request that must still be running when it is cut (prompt plus
#: output stay within the engines' max_model_len of 2,048).
LONG_OUTPUT = 1200


def _instance(engine: VllmEngine, gpu: int) -> dict[str, Any]:
    return engine.instance(host=HOSTS[0], gpus=[gpu], block_size=BLOCK_TOKENS).model_dump(
        mode="json", exclude_none=True)


@pytest.fixture(scope="module")
def gateway(vllm_pair: VllmPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway over the session's shared P/D pair (always disaggregate; prefix
    pulls on, the default: the tests below assert that none is planned, as no engine
    holds a prefix its peer lacks)."""
    instances = [_instance(vllm_pair.prefill, 0), _instance(vllm_pair.decode, 1)]
    gw = start_gateway_for(instances, tmp_path_factory.mktemp("gw-vllm"),
                           args=["--pd-min-uncached-tokens", "0"])
    yield gw
    gw.stop()


def _metric(engine: VllmEngine, name: str, **labels: str) -> float:
    """Sum of a metric's samples on ``engine`` (matching ``labels``)."""
    total = 0.0
    for family in text_string_to_metric_families(engine.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total


def _in_routing(gw: Gateway) -> dict[str, bool]:
    """Each engine's ``in_routing`` flag, from the gateway's health document."""
    health = httpx.get(f"{gw.url}/v1/gateway/health", timeout=10).json()
    return {e["name"]: e["in_routing"] for e in health["engines"]}


def _prompt(tag: str, repeats: int = 14) -> str:
    return f"[{tag}] " + "a gateway routes each request to a pair of engines. " * repeats


def test_completion_is_disaggregated_for_real_and_equals_a_cold_direct_run(
        gateway: Gateway, vllm_pair: VllmPair) -> None:
    prompt = _prompt("completion")
    body = {"model": MODEL_NAME, "prompt": prompt, **GREEDY}
    direct = vllm_pair.prefill.post("/v1/completions", body)  # cold: prompt never seen
    assert direct.status_code == 200, direct.text
    moved = _metric(vllm_pair.decode, "vllm:nixl_bytes_transferred_sum")
    answer = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-toposched-mode"] == "disaggregated"
    assert answer.headers["x-toposched-prefill"] == vllm_pair.prefill.name
    assert answer.headers["x-toposched-pull"] == "-"  # the bytes below are the P→D leg's
    assert answer.json()["choices"][0]["text"] == direct.json()["choices"][0]["text"]
    tokens = answer.json()["usage"]["prompt_tokens"]
    grew = _metric(vllm_pair.decode, "vllm:nixl_bytes_transferred_sum") - moved
    blocks = grew / (BLOCK_TOKENS * KV_BYTES_PER_TOKEN)
    assert blocks == int(blocks) and tokens // BLOCK_TOKENS <= blocks <= -(-tokens // 32), \
        f"{grew} bytes moved for {tokens} prompt tokens"
    assert gateway.load(vllm_pair.decode.name)["requests"] == 0


def test_streamed_chat_is_disaggregated_and_equals_a_cold_direct_run(
        gateway: Gateway, vllm_pair: VllmPair) -> None:
    messages = [{"role": "user", "content": _prompt("chat")}]
    direct = vllm_pair.prefill.post("/v1/chat/completions",
                                    {"model": MODEL_NAME, "messages": messages, **GREEDY})
    assert direct.status_code == 200, direct.text
    moved = _metric(vllm_pair.decode, "vllm:nixl_bytes_transferred_sum")
    body = {"model": MODEL_NAME, "messages": messages, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body,
                      timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["x-toposched-mode"] == "disaggregated"
        assert r.headers["x-toposched-pull"] == "-"
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text == direct.json()["choices"][0]["message"]["content"]
    assert _metric(vllm_pair.decode, "vllm:nixl_bytes_transferred_sum") > moved


def test_client_disconnect_aborts_the_decode_and_frees_load(
        gateway: Gateway, vllm_pair: VllmPair) -> None:
    decode = vllm_pair.decode
    generated = _metric(decode, "vllm:generation_tokens_total")
    body = {"model": MODEL_NAME, "prompt": _prompt("leave", 4), "stream": True,
            "max_tokens": LONG_OUTPUT, "ignore_eos": True, "temperature": 0.0}
    with httpx.stream("POST", f"{gateway.url}/v1/completions", json=body, timeout=120) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
    wait_for(lambda: _metric(decode, "vllm:num_requests_running") == 0,
             "the decode engine no longer running the request", timeout_s=120)
    # ended early: fewer tokens than asked for were generated
    assert _metric(decode, "vllm:generation_tokens_total") - generated < LONG_OUTPUT
    wait_for(lambda: gateway.load(decode.name)["requests"] == 0, "decode load released")


def test_prefill_death_falls_back_to_decode_only(vllm_fleet: EngineFleet, vllm_pair: VllmPair,
                                                 tmp_path: Path) -> None:
    (doomed,) = vllm_fleet.start(EngineOptions("vllm-prefill-doomed", role="prefill",
                                               nixl=True, kv_events=False))
    # No health scrape after the first: the gateway itself must find the dead prefill
    # engine on the prefill leg (a scrape between the kill and the request would take it
    # out of routing first, and the request would never meet the corpse).
    gw = start_gateway_for([_instance(doomed, 2), _instance(vllm_pair.decode, 1)], tmp_path,
                           args=["--pd-min-uncached-tokens", "0"],
                           env={"TOPOSCHED_ENGINE_SCRAPE_INTERVAL_S": "300",
                                "TOPOSCHED_ENGINE_STALE_AFTER_S": "3600"})
    try:
        wait_for(lambda: _in_routing(gw) == {doomed.name: True, vllm_pair.decode.name: True},
                 "both engines in routing after the first scrape")
        # token ids (the byte tokenizer's): no /tokenize, the prefill leg meets the corpse
        ids = list(_prompt("prefill-death").encode())
        body = {"model": MODEL_NAME, "prompt": ids, **GREEDY}
        direct = vllm_pair.prefill.post("/v1/completions", body)
        doomed.kill()
        answer = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-toposched-mode"] == "decode-only"
        assert "unreachable" in answer.headers["x-toposched-reason"]
        assert answer.json()["choices"][0]["text"] == direct.json()["choices"][0]["text"]
        assert _in_routing(gw)[doomed.name] is False
        assert gw.load(doomed.name)["requests"] == 0
        assert gw.load(vllm_pair.decode.name)["requests"] == 0
    finally:
        gw.stop()


def test_decode_death_mid_stream_ends_cleanly(vllm_fleet: EngineFleet, vllm_pair: VllmPair,
                                              tmp_path: Path) -> None:
    (doomed,) = vllm_fleet.start(EngineOptions("vllm-decode-doomed", role="decode",
                                               nixl=True, kv_events=False))
    gw = start_gateway_for([_instance(vllm_pair.prefill, 0), _instance(doomed, 2)], tmp_path,
                           args=["--pd-min-uncached-tokens", "0"])
    try:
        body = {"model": MODEL_NAME, "prompt": _prompt("decode-death", 4), "stream": True,
                "max_tokens": LONG_OUTPUT, "ignore_eos": True, "temperature": 0.0}
        with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            doomed.kill()
            rest = [line for line in lines if line.startswith("data: ")]
        assert "error" in json.loads(rest[-1][6:])
        wait_for(lambda: gw.load(doomed.name)["requests"] == 0, "decode load released")
        again = httpx.post(f"{gw.url}/v1/completions", timeout=60, json={
            "model": MODEL_NAME, "prompt": _prompt("after"), **GREEDY})
        assert again.status_code == 503  # the only decode engine is out of routing
        assert gw.load(vllm_pair.prefill.name)["requests"] == 0
    finally:
        gw.stop()


def _by_source(engine: VllmEngine) -> dict[str, float]:
    """The engine's prompt tokens by where their KV came from (computed, its prefix
    cache, another engine over NIXL) and its NIXL bytes read."""
    figures = {source: _metric(engine, "vllm:prompt_tokens_by_source_total", source=source)
               for source in ("local_compute", "local_cache_hit", "external_kv_transfer")}
    figures["nixl_bytes"] = _metric(engine, "vllm:nixl_bytes_transferred_sum")
    return figures


def _events(gw: Gateway, name: str) -> int:
    status = httpx.get(f"{gw.url}/v1/instances/{name}", timeout=10).json()["status"]
    return int(sum(stream["events"] for stream in status["kv_events"]))


def test_a_prefix_pull_lands_in_the_prefill_engines_cache_and_its_prefill_hits_it(
        vllm_pair: VllmPair, tmp_path: Path) -> None:
    """With the gateway's default (prefix pulls on). Holder: the decode engine (it
    cached the prompt's first 4 blocks); the prefill engine copies them over NIXL with
    vLLM's own protocol before its prefill leg, whose prefill then finds them in its
    prefix cache: vLLM's counters say so, and the answer equals the decode engine's cold
    run (cache_salt: none of its blocks reused)."""
    prefill, decode = vllm_pair.prefill, vllm_pair.decode
    gw = start_gateway_for([_instance(prefill, 0), _instance(decode, 1)], tmp_path, args=[
        "--pd-min-uncached-tokens", "0",
        "--policy", str(no_local_prefill_policy(tmp_path))])
    try:
        rng = random.Random(14)
        prompt = [rng.randrange(256) for _ in range(6 * BLOCK_TOKENS + 8)]
        held = 4
        body = {"model": MODEL_NAME, "prompt": prompt, **GREEDY}
        cold_hits = _metric(decode, "vllm:prefix_cache_hits_total")
        cold = decode.post("/v1/completions", {**body, "cache_salt": "cold-reference"})
        assert cold.status_code == 200, cold.text
        assert _metric(decode, "vllm:prefix_cache_hits_total") == cold_hits  # computed cold
        seen = _events(gw, decode.name)
        other_tail = [(t + 1) % 256 for t in prompt[held * BLOCK_TOKENS:]]
        warm = decode.post("/v1/completions", {**body, "max_tokens": 1,
                                               "prompt": prompt[:held * BLOCK_TOKENS] + other_tail})
        assert warm.status_code == 200, warm.text
        wait_for(lambda: _events(gw, decode.name) > seen, "the decode engine's blocks indexed")
        before = _by_source(prefill)
        answer = httpx.post(f"{gw.url}/v1/completions", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        h = answer.headers
        assert (h["x-toposched-mode"], h["x-toposched-prefill"], h["x-toposched-decode"]) == \
            ("disaggregated", prefill.name, decode.name)
        assert h["x-toposched-pull"] == f"{decode.name}; blocks={held}"
        assert answer.json()["choices"][0]["text"] == cold.json()["choices"][0]["text"]
        grew = {k: v - before[k] for k, v in _by_source(prefill).items()}
        # the copy read the 4 blocks over NIXL; the prefill leg hit them, computed the rest
        assert grew == {"external_kv_transfer": held * BLOCK_TOKENS,
                        "local_cache_hit": held * BLOCK_TOKENS,
                        "local_compute": len(prompt) - held * BLOCK_TOKENS,
                        "nixl_bytes": held * BLOCK_TOKENS * KV_BYTES_PER_TOKEN}, grew
        assert _gateway_pulls(gw) == {"ok": 1.0}
        assert gw.load(prefill.name)["requests"] == 0
        assert gw.load(decode.name)["requests"] == 0
    finally:
        gw.stop()


def _gateway_pulls(gw: Gateway) -> dict[str, float]:
    text = httpx.get(f"{gw.url}/metrics", timeout=5).text
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "toposched_gateway_pulls_total"}
