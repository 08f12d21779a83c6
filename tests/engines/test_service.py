"""Engine instances through the service (ASGI app with its lifespan): REST, KV events
into routing, /metrics into load, a dead engine out of routing, NIXL figures by tier."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from engines.fake import stored
from tests.api.service_builders import OPERATOR, WORKER, bearer, cluster, make_app
from tests.engines.fake_engine import FakeEngine

pytestmark = pytest.mark.process
BLOCK = 32
HOST = "z0-p0-r0-h00"
OTHER = "z0-p0-r1-h00"


def _until(check: Callable[[], Any], what: str, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def fabric_file(tmp_path: Path) -> Path:
    path = tmp_path / "fabric.json"
    path.write_text(cluster(2).model_dump_json())
    return path


@pytest.fixture
def client(fabric_file: Path) -> Iterator[TestClient]:
    settings = Settings(fabric=fabric_file, engine_scrape_interval_s=0.05,
                        engine_stale_after_s=2.0)
    with TestClient(make_app(settings=settings)) as test_client:
        yield test_client


@pytest.fixture
def engines() -> Iterator[dict[str, FakeEngine]]:
    made: dict[str, FakeEngine] = {}
    yield made
    for engine in made.values():
        engine.kill()


def _register(client: TestClient, engine: FakeEngine, **overrides: Any) -> None:
    instance = engine.instance(**overrides)
    answer = client.put(f"/v1/instances/{instance.name}",
                        json=instance.model_dump(mode="json"), headers=bearer())
    assert answer.status_code in (200, 201), answer.text


def _status(client: TestClient, name: str) -> dict[str, Any]:
    answer = client.get(f"/v1/instances/{name}", headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    status: dict[str, Any] = answer.json()["status"]
    return status


def _route(client: TestClient, tokens: list[int], **extra: Any) -> Any:
    return client.post("/v1/route", json={"model": "m", "tokens": tokens, **extra},
                       headers=bearer(WORKER))


def _up(client: TestClient, *names: str) -> None:
    for name in names:
        _until(lambda n=name: _status(client, n)["state"] == "up", f"{name} up")


def test_instances_rest_needs_the_operator_and_reports_paths(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["a"] = FakeEngine("h0/prefill-0")
    body = engines["a"].instance().model_dump(mode="json")
    assert client.put("/v1/instances/h0/prefill-0", json=body).status_code == 401
    assert client.put("/v1/instances/h0/prefill-0", json=body,
                      headers=bearer(WORKER)).status_code == 403
    created = client.put("/v1/instances/h0/prefill-0", json=body, headers=bearer())
    assert created.status_code == 201, created.text
    assert client.put("/v1/instances/h0/prefill-0", json=body,
                      headers=bearer()).status_code == 200
    _up(client, "h0/prefill-0")
    bad = client.put("/v1/instances", headers={**bearer(), "Content-Type": "application/yaml"},
                     content="version: 1\ninstances:\n  - {name: x, engine: vllm, role: p}\n")
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "instances[0].role" in bad.text and "instances[0].base_url" in bad.text
    assert client.delete("/v1/instances/h0/prefill-0", headers=bearer()).status_code == 204
    assert client.get("/v1/instances/h0/prefill-0", headers=bearer()).status_code == 404


def test_kv_events_of_an_engine_reach_the_index_and_change_routing(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["a"] = FakeEngine("a", encoding="array")
    engines["b"] = FakeEngine("b", encoding="map")
    _register(client, engines["a"])
    _register(client, engines["b"], gpus=[1])
    _up(client, "a", "b")
    prompt = list(range(7, 7 + 8 * BLOCK))
    before = _route(client, prompt).json()["decision"]
    assert before["decode"]["cached_blocks"] == 0
    for name in ("a", "b"):  # array-encoded events on a, map-encoded on b
        target = engines[name]
        target.publisher.publish([stored(prompt[:6 * BLOCK], BLOCK)])
        _until(lambda n=name: _status(client, n)["indexed_blocks"] == 6, f"{name} indexed")
    engines["b"].publisher.publish([stored(prompt[6 * BLOCK:], BLOCK, parent=None,
                                           hashes=None)])  # an unrelated root chain
    decision = _route(client, prompt).json()["decision"]
    assert decision["decode"]["cached_blocks"] == 6
    assert decision["prefill"]["cached_blocks"] == 6


def test_a_gap_is_replayed_and_the_index_stays_whole(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["a"] = FakeEngine("a")
    _register(client, engines["a"])
    _up(client, "a")
    prompt = list(range(100, 100 + 3 * BLOCK))
    publisher = engines["a"].publisher
    publisher.publish([stored(prompt[:BLOCK], BLOCK, hashes=[1])])
    _until(lambda: _status(client, "a")["indexed_blocks"] == 1, "first block")
    publisher.publish([stored(prompt[BLOCK:2 * BLOCK], BLOCK, hashes=[2], parent=1)],
                      send=False)
    publisher.publish([stored(prompt[2 * BLOCK:], BLOCK, hashes=[3], parent=2)])
    _until(lambda: _status(client, "a")["indexed_blocks"] == 3, "gap replayed")
    stream = _status(client, "a")["kv_events"][0]
    assert stream["gaps"] >= 1 and stream["replayed_batches"] >= 1
    assert stream["lost_batches"] == 0
    assert _route(client, prompt).json()["decision"]["decode"]["cached_blocks"] == 3


def test_engine_metrics_are_the_workers_load(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["busy"] = FakeEngine("busy", running=300, waiting=40, kv_usage=0.5,
                                 mean_prompt_tokens=500.0)
    engines["idle"] = FakeEngine("idle", engine="sglang", running=0, waiting=0)
    _register(client, engines["busy"], host=OTHER)
    _register(client, engines["idle"], host=OTHER, gpus=[1], bootstrap_port=8998,
              nixl_side_channel=None)
    _up(client, "busy", "idle")
    load = _until(lambda: _status(client, "busy")["load"], "busy's load")
    assert (load["running"], load["waiting"], load["kv_usage"]) == (300, 40, 0.5)
    assert load["block_size"] == BLOCK
    assert _status(client, "idle")["load"]["metric_names"]["running"] == \
        "sglang:num_running_reqs"
    for i in range(4):
        decision = _route(client, list(range(i * 1000, i * 1000 + 4 * BLOCK))).json()
        assert decision["decision"]["decode"]["worker"] == "idle"
    engines["busy"].set_metrics(legacy=True, kv_usage=0.25)
    _until(lambda: _status(client, "busy")["load"]["metric_names"].get("kv_usage")
           == "vllm:gpu_cache_usage_perc", "the deprecated name")


def test_a_dead_engine_leaves_routing_within_one_lease(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["a"] = FakeEngine("a")
    engines["b"] = FakeEngine("b")
    _register(client, engines["a"])
    _register(client, engines["b"], gpus=[1])
    _up(client, "a", "b")
    prompt = list(range(50, 50 + 4 * BLOCK))
    engines["a"].publisher.publish([stored(prompt, BLOCK)])
    _until(lambda: _status(client, "a")["indexed_blocks"] == 4, "a's blocks")
    killed = time.monotonic()
    engines["a"].kill()
    _until(lambda: _status(client, "a")["state"] == "down", "a down")
    assert time.monotonic() - killed < 10.0  # the lease (lease_ttl_s)
    for _ in range(5):
        decision = _route(client, prompt).json()["decision"]
        assert "a" not in (decision["prefill"]["worker"], decision["decode"]["worker"])
    assert _status(client, "a")["indexed_blocks"] == 0


def test_sidecar_announcement_never_overrides_an_operator(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["a"] = FakeEngine("a")
    instance = engines["a"].instance()
    announced = client.post("/v1/instances/announce", json=instance.model_dump(mode="json"),
                            headers=bearer(WORKER))
    assert announced.status_code == 201 and announced.json()["source"] == "sidecar"
    assert client.post("/v1/instances/announce", json=instance.model_dump(mode="json"),
                       headers=bearer(WORKER)).status_code == 200
    _register(client, engines["a"], max_requests=8)
    clash = client.post("/v1/instances/announce", json=instance.model_dump(mode="json"),
                        headers=bearer(WORKER))
    assert clash.status_code == 409


def test_nixl_figures_land_in_the_tier_telemetry(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["p"] = FakeEngine("p", nixl=(0, 0.0, 0.0))
    engines["d"] = FakeEngine("d", nixl=(0, 0.0, 0.0))
    _register(client, engines["p"], role="prefill", nixl_side_channel="10.0.0.8:5600")
    _register(client, engines["d"], role="decode", host=OTHER,
              nixl_side_channel="10.0.0.9:5600")
    _up(client, "p", "d")
    _until(lambda: _status(client, "d")["load"], "d's first scrape")
    decision = _route(client, list(range(9, 9 + 40 * BLOCK))).json()["decision"]
    assert decision["mode"] == "disaggregated"
    tier = decision["transfer"]["tier"]
    engines["d"].set_metrics(nixl=(1, 0.004, 4 * BLOCK * 1024.0))
    wanted = f'toposched_transfers_total{{tier="{tier}",outcome="ok"}}'

    def exported() -> str | None:
        text = client.get("/metrics").text
        return text if wanted in text else None

    metrics = _until(exported, "the transfer sample")
    assert 'toposched_engine_up{instance="d"} 1.0' in metrics
    assert "toposched_engine_nixl_unattributed_transfers" in metrics


def test_localhost_side_channel_across_hosts_is_refused(
        client: TestClient, engines: dict[str, FakeEngine]) -> None:
    engines["p"] = FakeEngine("p")
    engines["d"] = FakeEngine("d")
    _register(client, engines["p"], role="prefill", nixl_side_channel="localhost:5600")
    instance = engines["d"].instance(role="decode", host=OTHER)
    answer = client.put("/v1/instances/d", json=instance.model_dump(mode="json"),
                        headers=bearer(OPERATOR))
    assert answer.status_code == 422 and "p.nixl_side_channel" in answer.text


def test_centralised_mode_one_bound_socket_for_all_engines(fabric_file: Path) -> None:
    from engines.fake import FakePublisher

    settings = Settings(fabric=fabric_file, engine_scrape_interval_s=0.05,
                        kv_events_bind="tcp://127.0.0.1:0")
    engine = FakeEngine("c0")
    with TestClient(make_app(settings=settings)) as client:
        bound = _until(lambda: client.get("/v1/instances", headers=bearer(WORKER)).json()
                       ["kv_events_bound"], "the bound socket")
        publisher = FakePublisher(endpoint=bound, connect=True, topic="kv@c0",
                                  encoding="array")
        try:
            _register(client, engine, kv_events={"mode": "bind", "topic": "kv@c0",
                                                 "replay_endpoint": publisher.replay_endpoint})
            _up(client, "c0")
            prompt = list(range(300, 300 + 5 * BLOCK))
            publisher.publish([stored(prompt, BLOCK)])
            _until(lambda: _status(client, "c0")["indexed_blocks"] == 5, "bound events")
            assert _route(client, prompt).json()["decision"]["decode"]["cached_blocks"] == 5
        finally:
            publisher.close()
            engine.kill()


def test_instances_are_shared_between_replicas(fabric_file: Path) -> None:
    from tests.servers import redis_server

    engine = FakeEngine("r0")
    with redis_server() as redis:
        settings = Settings(fabric=fabric_file, redis_url=redis.url, shared_poll_s=0.05,
                            engine_scrape_interval_s=0.05)
        with TestClient(make_app(settings=settings)) as a, \
                TestClient(make_app(settings=settings)) as b:
            _register(a, engine)
            _until(lambda: b.get("/v1/instances/r0", headers=bearer(WORKER)).status_code
                   == 200, "B follows A's instance")
            _up(b, "r0")  # B scrapes the engine itself
            assert b.delete("/v1/instances/r0", headers=bearer()).status_code == 204
            _until(lambda: a.get("/v1/instances/r0", headers=bearer(WORKER)).status_code
                   == 404, "A follows B's removal")
    engine.kill()
