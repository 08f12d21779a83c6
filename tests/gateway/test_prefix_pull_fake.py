"""Prefix pulls through the gateway (on by default; ``--no-prefix-pull`` or
``TOPOSCHED_PREFIX_PULL=0`` turn them off) in front of fake vLLM engines: the decode
engine holds the prompt's prefix (a KV event says so), the router has the prefill
engine copy it first, and a copy that fails leaves the request on its two legs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.cli.main import run as cli
from api.service import RoutingOptions
from api.settings import Settings
from engines.fakes.model import prompt_tokens
from engines.instance import EngineInstance
from engines.pd import LegPlan, PrefixCopy, Timeline, protocol_for
from engines.pd.http import EngineHttp
from scheduler.prefix.hashing import block_hashes
from tests.gateway.harness import (
    HOSTS,
    MODEL,
    Gateway,
    no_local_prefill_policy,
    start_engine,
    start_gateway,
    wait_for,
)
from tests.servers import free_port

BLOCK = 16


def _hold(gateway: Gateway, worker: str, prompt: str, seq: int = 1) -> int:
    """Tell the gateway ``worker`` caches ``prompt``'s whole blocks (event ``seq``: each
    worker's events in order, one ``seq`` once); how many (less than the whole
    prompt's: a decode engine holding all would be a local prefill)."""
    held = block_hashes(prompt_tokens({"prompt": prompt}), BLOCK)
    event = {"kind": "block_stored", "worker": worker, "seq": seq, "block_hashes": held,
             "model": MODEL}
    assert httpx.post(f"{gateway.url}/v1/kv-events", json=event).status_code == 200
    return len(held)


def _pulls(gateway: Gateway) -> dict[str, float]:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "toposched_gateway_pulls_total"}


def _overhead(gateway: Gateway) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "toposched_gateway_pull_overhead_seconds")


def _start(tmp_path: Path, args: tuple[str, ...] = (),
           env: dict[str, str] | None = None, **d0_options: Any) -> Gateway:
    engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
               start_engine("d0", host=HOSTS[0], gpu=1, role="decode", **d0_options)]
    return start_gateway(engines, tmp_path, args=[
        "--pd-min-uncached-tokens", "0", *args,
        "--policy", str(no_local_prefill_policy(tmp_path))], env=env)


def _ask(gateway: Gateway, prompt: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4}
    answer = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-toposched-mode"] == "disaggregated", answer.headers
    direct = httpx.post(f"{gateway.engines['d0'].url}/v1/completions", json=body, timeout=30)
    assert answer.json()["choices"][0]["token_ids"] == direct.json()["choices"][0]["token_ids"]
    return answer


def test_the_prefill_engine_copies_the_prefix_the_decode_engine_holds(tmp_path: Path) -> None:
    gateway = _start(tmp_path)
    try:
        p0, d0 = gateway.engines["p0"], gateway.engines["d0"]
        prompt = "a prefix the decode engine holds, and a tail. " * 30
        blocks = _hold(gateway, "d0", prompt[:-100])
        answer = _ask(gateway, prompt)
        assert answer.headers["x-toposched-pull"] == f"d0; blocks={blocks}"
        # the holder answered the prefix as a prefill leg, the prefill engine read it
        # (its one transfer), then ran the prefill leg; the decode engine read that
        assert d0.state()["counts"]["prefill_leg"] == 1
        assert p0.state()["counts"]["transfers"] == 1
        assert p0.state()["bytes_read"] == blocks * BLOCK * 4096
        assert p0.state()["counts"]["prefill_leg"] == 1
        assert d0.state()["counts"]["transfers"] == 1
        assert _pulls(gateway) == {"ok": 1.0}
        # without a prefix held elsewhere, no pull
        assert _ask(gateway, "nobody holds this. " * 40).headers["x-toposched-pull"] == "-"
        assert _pulls(gateway) == {"ok": 1.0}
    finally:
        gateway.stop()


@pytest.mark.parametrize(("args", "env"), [(("--no-prefix-pull",), None),
                                           ((), {"TOPOSCHED_PREFIX_PULL": "0"})],
                         ids=["flag", "env"])
def test_pulls_turned_off_leave_the_prefix_to_be_recomputed(
        tmp_path: Path, args: tuple[str, ...], env: dict[str, str] | None) -> None:
    gateway = _start(tmp_path, args, env)
    try:
        p0, d0 = gateway.engines["p0"], gateway.engines["d0"]
        prompt = "a prefix the decode engine holds, and a tail. " * 30
        _hold(gateway, "d0", prompt[:-100])
        assert _ask(gateway, prompt).headers["x-toposched-pull"] == "-"
        assert "transfers" not in p0.state()["counts"]  # the prefill engine copied nothing
        assert p0.state()["counts"]["prefill_leg"] == 1
        assert "prefill_leg" not in d0.state()["counts"]
        assert _pulls(gateway) == {}
    finally:
        gateway.stop()


#: A holder whose copy leg takes 1 ms a prompt token (the 1,280 tokens of the held
#: prefix: ~1.3 s), twenty times what the copy saves the prefill engine (1,280 tokens
#: at the router's 20,000 tokens/s: 64 ms): even a fifth of it (the learned mean after
#: one pull, from 0) makes the next pull not pay.
SLOW_HOLDER = {"prefill_s_per_token": 0.001}
PROMPTS = ("a prefix the decode engine holds, and a tail. " * 30,
           "another prefix it holds, and another tail here. " * 29)


def test_the_gateway_learns_what_a_pull_costs_and_stops_pulling_where_it_does_not_pay(
        tmp_path: Path) -> None:
    gateway = _start(tmp_path, **SLOW_HOLDER)
    try:
        assert _overhead(gateway) == 0.0  # nothing learned yet: fabric time only
        held = [_hold(gateway, "d0", prompt[:-100], seq) for seq, prompt in enumerate(PROMPTS, 1)]
        assert _ask(gateway, PROMPTS[0]).headers["x-toposched-pull"] == f"d0; blocks={held[0]}"
        assert _overhead(gateway) > 0.2  # a fifth of the copy's ~1.3 s (fabric: µs)
        # priced with it, the next copy costs more than it saves: prefilled on p0 whole
        answer = _ask(gateway, PROMPTS[1])
        assert answer.headers["x-toposched-pull"] == "-"
        assert answer.headers["x-toposched-decode-cached-tokens"] == str(held[1] * BLOCK)
        assert _pulls(gateway) == {"ok": 1.0}
    finally:
        gateway.stop()


def test_a_pinned_pull_overhead_is_not_learned(tmp_path: Path) -> None:
    gateway = _start(tmp_path, ("--pull-overhead-s", "0"), **SLOW_HOLDER)
    try:
        held = [_hold(gateway, "d0", prompt[:-100], seq) for seq, prompt in enumerate(PROMPTS, 1)]
        for prompt, blocks in zip(PROMPTS, held, strict=True):
            assert _ask(gateway, prompt).headers["x-toposched-pull"] == f"d0; blocks={blocks}"
        assert _overhead(gateway) == 0.0
        assert _pulls(gateway) == {"ok": 2.0}
    finally:
        gateway.stop()


def test_a_bad_pull_overhead_exits_2_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["gateway", "--instances", str(tmp_path / "none.yaml"),
                "--pull-overhead-s", "-1"]) == 2
    assert "TOPOSCHED_PULL_OVERHEAD_S" in capsys.readouterr().err


def test_a_bad_prefix_pull_setting_exits_2_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TOPOSCHED_PREFIX_PULL", "maybe")
    assert cli(["gateway", "--instances", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "TOPOSCHED_PREFIX_PULL" in err and "'maybe'" in err


def test_a_failed_copy_leaves_the_request_on_its_two_legs(tmp_path: Path) -> None:
    # h0 holds the prefix but has no room to decode it (4 KV blocks: never the decode
    # engine), and dies after the first health scrape (the next is 300 s away): the copy's
    # holder leg finds it gone
    engines = [start_engine("p0", host=HOSTS[0], gpu=0, role="prefill"),
               start_engine("d0", host=HOSTS[0], gpu=1, role="decode"),
               start_engine("h0", host=HOSTS[0], gpu=2, role="decode", num_blocks=4)]
    gateway = start_gateway(engines, tmp_path, args=[
        "--pd-min-uncached-tokens", "0", "--prefix-pull",
        "--policy", str(no_local_prefill_policy(tmp_path))],
        env={"TOPOSCHED_ENGINE_SCRAPE_INTERVAL_S": "300",
             "TOPOSCHED_ENGINE_STALE_AFTER_S": "3600"})
    try:
        wait_for(lambda: all(_in_routing(gateway).values()), "every engine in routing")
        prompt = "a prefix a dead engine held. " * 40
        _hold(gateway, "h0", prompt[:-100])
        gateway.engines["h0"].kill()
        answer = _ask(gateway, prompt)
        assert answer.headers["x-toposched-pull"] == "-"
        p0, d0 = gateway.engines["p0"], gateway.engines["d0"]
        assert "transfers" not in p0.state()["counts"]  # nothing was copied
        assert p0.state()["counts"]["prefill_leg"] == 1
        assert d0.state()["counts"]["transfers"] == 1
        assert _pulls(gateway) == {"failed": 1.0}
        assert _in_routing(gateway)["h0"] is False
        assert gateway.load("p0")["requests"] == 0 and gateway.load("d0")["requests"] == 0
    finally:
        gateway.stop()


def _in_routing(gateway: Gateway) -> dict[str, bool]:
    health = httpx.get(f"{gateway.url}/v1/gateway/health", timeout=10).json()
    return {e["name"]: e["in_routing"] for e in health["engines"]}


def test_an_unreachable_holder_skips_the_copy(tmp_path: Path) -> None:
    """The vLLM legs against real fakes, the holder a port nobody listens on."""
    p0 = start_engine("p0", host=HOSTS[0], gpu=0, role="prefill")
    d0 = start_engine("d0", host=HOSTS[0], gpu=1, role="decode")
    try:
        dead = EngineInstance.model_validate({**d0.instance, "name": "gone",
                                              "base_url": f"http://127.0.0.1:{free_port()}"})
        body = {"model": MODEL, "prompt": "the copy's holder is gone. " * 20, "max_tokens": 3}
        ids = tuple(prompt_tokens(body))
        plan = LegPlan(path="/v1/completions", body=body, request_id="pull-1",
                       decode=EngineInstance.model_validate(d0.instance),
                       prefill=EngineInstance.model_validate(p0.instance),
                       pull=PrefixCopy(dead, ids[:BLOCK * 4], 4))

        async def run() -> tuple[list[int], Timeline]:
            timeline = Timeline()
            client = EngineHttp(connect_timeout_s=2, read_timeout_s=30)
            answer = await protocol_for("vllm").open(client, plan, timeline)
            await answer.response.read()
            await answer.aclose()
            await client.aclose()
            return list(answer.response.json()["choices"][0]["token_ids"]), timeline

        tokens, timeline = asyncio.run(run())
        assert timeline.pull_outcome == "failed" and timeline.unreachable == ["gone"]
        assert timeline.pull_failure is not None and "unreachable" in timeline.pull_failure
        assert timeline.disaggregated and timeline.fallback is None
        direct = httpx.post(f"{d0.url}/v1/completions", json=body, timeout=30)
        assert tokens == direct.json()["choices"][0]["token_ids"]
    finally:
        for engine in (p0, d0):
            engine.kill()


def test_only_the_gateway_plans_pulls() -> None:
    """``toposched serve``'s sidecar route path runs no copy: the setting (on by
    default) is the gateway's (its router gets ``CostParams.prefix_pull``)."""
    assert not RoutingOptions.from_settings(Settings()).prefix_pull
    assert not RoutingOptions.from_settings(Settings(prefix_pull=True)).prefix_pull
    assert RoutingOptions.from_settings(Settings(gateway=True)).prefix_pull
    assert not RoutingOptions.from_settings(Settings(prefix_pull=False,
                                                     gateway=True)).prefix_pull
