"""Real vLLM (CPU) engines behind the service: their KV events (map encoding) reach the
index and steer routing, their /metrics are the workers' load, and a killed engine
leaves routing. The P/D pair is the session's shared one; the engine killed here is
started for this test alone."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.api.service_builders import WORKER, bearer, cluster, make_app
from tests.engines.vllm_fixtures import VllmPair
from tests.engines.vllm_harness import (
    BLOCK_SIZE,
    MODEL_NAME,
    EngineFleet,
    EngineOptions,
    VllmEngine,
)
from tests.servers import free_port
from tests.sidecar.harness import Proc, _cli, _spawn

pytestmark = [pytest.mark.engine, pytest.mark.process, pytest.mark.timeout(900)]
HOST = "z0-p0-r0-h00"


def _until(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except httpx.TransportError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _prompt(blocks: int) -> list[int]:
    """``blocks`` full blocks and a few tokens more, random: a prompt no other test sent
    (the engines' caches live for the whole session)."""
    rng = random.Random()
    return [rng.randrange(256) for _ in range(blocks * BLOCK_SIZE + 5)]


@pytest.fixture(scope="module")
def fabric_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fabric") / "fabric.json"
    path.write_text(cluster(2).model_dump_json())
    return path


@pytest.fixture
def service(vllm_pair: VllmPair, fabric_file: Path) -> Iterator[TestClient]:
    """The app with both engines of the pair registered as aggregated instances."""
    settings = Settings(fabric=fabric_file, engine_scrape_interval_s=0.1)
    with TestClient(make_app(settings=settings)) as client:
        for gpu, engine in enumerate((vllm_pair.prefill, vllm_pair.decode)):
            instance = engine.instance(host=HOST, gpus=[gpu], role="both")
            answer = client.put(f"/v1/instances/{engine.name}", headers=bearer(),
                                json=instance.model_dump(mode="json"))
            assert answer.status_code == 201, answer.text
        for engine in (vllm_pair.prefill, vllm_pair.decode):
            _until(lambda e=engine: _status(client, e.name)["state"] == "up", "engine up")
        yield client


def _status(client: TestClient, name: str) -> dict[str, Any]:
    status: dict[str, Any] = client.get(f"/v1/instances/{name}",
                                        headers=bearer(WORKER)).json()["status"]
    return status


def _complete(engine: VllmEngine, prompt: list[int], max_tokens: int = 1) -> None:
    answer = engine.post("/v1/completions", {"model": MODEL_NAME, "prompt": prompt,
                                             "max_tokens": max_tokens, "temperature": 0,
                                             "ignore_eos": True}, timeout_s=300)
    assert answer.status_code == 200, answer.text


def _decode_side(client: TestClient, prompt: list[int]) -> dict[str, Any]:
    answer = client.post("/v1/route", json={"model": MODEL_NAME, "tokens": prompt},
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    side: dict[str, Any] = answer.json()["decision"]["decode"]
    return side


def test_real_kv_events_reach_the_index_and_steer_routing(
        service: TestClient, vllm_pair: VllmPair) -> None:
    blocks = 24  # past the local-prefill limit: both sides count
    for engine in (vllm_pair.prefill, vllm_pair.decode):
        prompt = _prompt(blocks)
        assert _decode_side(service, prompt)["cached_blocks"] == 0
        _complete(engine, prompt)
        chosen = _until(lambda p=prompt: (side := _decode_side(service, p))["cached_blocks"]
                        and side, f"{engine.name}'s blocks in routing")
        assert chosen["worker"] == engine.name
        assert chosen["cached_blocks"] == blocks
        stream = _status(service, engine.name)["kv_events"][0]
        assert stream["events"] > 0 and stream["skipped_events"] == 0  # map encoding read
        assert _status(service, engine.name)["block_size"] == BLOCK_SIZE


def test_real_metrics_are_the_instances_load(service: TestClient, vllm_pair: VllmPair) -> None:
    engine = vllm_pair.decode
    load = _until(lambda: _status(service, engine.name)["load"], "a scrape")
    assert load["metric_names"]["running"] == "vllm:num_requests_running"
    assert load["metric_names"]["kv_usage"] == "vllm:kv_cache_usage_perc"
    assert load["block_size"] == BLOCK_SIZE and load["num_blocks"] > 0
    worker = threading.Thread(target=_complete, args=(engine, _prompt(4), 400))
    worker.start()
    try:
        busy = _until(lambda: (figures := _status(service, engine.name)["load"])["running"]
                      and figures, "a running request in the engine's metrics")
        assert busy["running"] >= 1 and busy["kv_usage"] > 0
    finally:
        worker.join(300)
    _until(lambda: _status(service, engine.name)["load"]["running"] == 0, "request done")


def test_a_killed_engine_leaves_routing_of_a_real_service(
        vllm_fleet: EngineFleet, vllm_pair: VllmPair, fabric_file: Path,
        tmp_path: Path) -> None:
    (victim,) = vllm_fleet.start(EngineOptions("vllm-victim", role="both"))
    survivor = vllm_pair.decode
    document = {"version": 1, "instances": [
        victim.instance(host=HOST, gpus=[2]).model_dump(mode="json", exclude_none=True),
        survivor.instance(host=HOST, gpus=[3], role="both").model_dump(
            mode="json", exclude_none=True)]}
    path = tmp_path / "instances.yaml"
    path.write_text(yaml.safe_dump(document))
    port = free_port()
    log = tmp_path / "serve.log"
    serve = Proc(_spawn(_cli("serve", "--port", str(port), "--fabric", str(fabric_file),
                             "--instances", str(path)), log,
                        {"TOPOSCHED_ENGINE_SCRAPE_INTERVAL_S": "0.2"}), log)
    base = f"http://127.0.0.1:{port}"
    try:
        states = lambda: {i["instance"]["name"]: i["status"]["state"]  # noqa: E731
                          for i in httpx.get(f"{base}/v1/instances").json()["instances"]}
        _until(lambda: set(states().values()) == {"up"}, "both engines up")
        prompt = _prompt(24)
        _complete(victim, prompt)
        _until(lambda: _route(base, prompt)["decode"]["worker"] == victim.name,
               "the victim's cache in routing")
        killed = time.monotonic()
        victim.kill()
        _until(lambda: states()[victim.name] == "down", "victim down", timeout_s=10.0)
        assert time.monotonic() - killed < 10.0  # one worker lease
        for _ in range(3):
            decision = _route(base, prompt)
            assert victim.name not in (decision["prefill"]["worker"],
                                       decision["decode"]["worker"])
    finally:
        serve.stop()


def _route(base: str, prompt: list[int]) -> dict[str, Any]:
    answer = httpx.post(f"{base}/v1/route", json={"model": MODEL_NAME, "tokens": prompt},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    decision: dict[str, Any] = answer.json()["decision"]
    return decision


def test_real_nixl_transfers_land_in_the_pairs_tier(vllm_pair: VllmPair,
                                                    fabric_file: Path) -> None:
    settings = Settings(fabric=fabric_file, engine_scrape_interval_s=0.1)
    with TestClient(make_app(settings=settings)) as client:
        for gpu, engine in enumerate((vllm_pair.prefill, vllm_pair.decode)):
            answer = client.put(f"/v1/instances/{engine.name}", headers=bearer(), json=engine
                                .instance(host=HOST, gpus=[4 + gpu]).model_dump(mode="json"))
            assert answer.status_code == 201, answer.text
        for engine in (vllm_pair.prefill, vllm_pair.decode):
            _until(lambda e=engine: _status(client, e.name)["load"], "first scrape")
        prompt = _prompt(24)
        routed = client.post("/v1/route", json={"model": MODEL_NAME, "tokens": prompt},
                             headers=bearer(WORKER)).json()["decision"]
        assert routed["mode"] == "disaggregated"
        assert (routed["prefill"]["worker"], routed["decode"]["worker"]) == (
            vllm_pair.prefill.name, vllm_pair.decode.name)
        _hand_over(vllm_pair, prompt)
        wanted = f'toposched_transfers_total{{tier="{routed["transfer"]["tier"]}",outcome="ok"}}'
        _until(lambda: wanted in client.get("/metrics").text, "the NIXL transfer by tier")


def _hand_over(pair: VllmPair, prompt: list[int]) -> None:
    """Run the two legs of vLLM's NixlConnector protocol by hand."""
    first = pair.prefill.post("/v1/completions", {
        "model": MODEL_NAME, "prompt": prompt, "max_tokens": 1, "temperature": 0,
        "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False,
                               "remote_engine_id": None, "remote_block_ids": None,
                               "remote_host": None, "remote_port": None}}, timeout_s=300)
    assert first.status_code == 200, first.text
    second = pair.decode.post("/v1/completions", {
        "model": MODEL_NAME, "prompt": prompt, "max_tokens": 2, "temperature": 0,
        "kv_transfer_params": first.json()["kv_transfer_params"]}, timeout_s=300)
    assert second.status_code == 200, second.text


def test_engine_events_steer_the_gateways_routing(vllm_pair: VllmPair,
                                                  fabric_file: Path) -> None:
    settings = Settings(fabric=fabric_file, engine_scrape_interval_s=0.1, gateway=True)
    with TestClient(make_app(settings=settings)) as client:
        for gpu, engine in enumerate((vllm_pair.prefill, vllm_pair.decode)):
            answer = client.put(f"/v1/instances/{engine.name}", headers=bearer(), json=engine
                                .instance(host=HOST, gpus=[6 + gpu], role="both")
                                .model_dump(mode="json"))
            assert answer.status_code == 201, answer.text
        for engine in (vllm_pair.prefill, vllm_pair.decode):
            _until(lambda e=engine: _status(client, e.name)["block_size"], "block size")
        for engine in (vllm_pair.prefill, vllm_pair.decode):
            prompt = _prompt(24)
            _complete(engine, prompt)
            _until(lambda p=prompt: _decode_side(client, p)["cached_blocks"] == 24,
                   "the engine's blocks indexed")
            answer = client.post("/v1/completions", json={
                "model": MODEL_NAME, "prompt": prompt, "max_tokens": 2, "temperature": 0})
            assert answer.status_code == 200, answer.text
            chosen = {k: v for k, v in answer.headers.items() if k.startswith("x-toposched")}
            if chosen["x-toposched-mode"] == "disaggregated":  # prefill where the KV is
                assert chosen["x-toposched-prefill"] == engine.name, chosen
            else:  # or the engine holding it computes nothing and decodes
                assert chosen["x-toposched-decode"] == engine.name, chosen
                assert chosen["x-toposched-decode-cached-tokens"] == str(24 * BLOCK_SIZE)
