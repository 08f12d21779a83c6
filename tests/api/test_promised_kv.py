"""Through the service, in memory and on a real Redis: a route's load reservation
promises its decode worker the KV blocks the request will take there, the router prices
that worker as fuller until the KV lands, and the promise goes back when it does; once
landed, the request's context counts in the worker's ``context_tokens`` until it ends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.api.service_builders import WORKER, bearer, cluster, load_cluster, make_app, worker_json
from tests.servers import RedisServer, redis_server

MODEL = "llama-3-70b"
#: 16-token blocks (the service's default): 256 expected output tokens are 16 blocks.
OUTPUT_BLOCKS = 16


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """A replica over a 3-host rail-optimised pod: prefill-0 on host 0; decode workers
    on GPU 0 of hosts 1 and 2 are registered by the test (the same tier from prefill-0)."""
    settings = Settings(expire_interval_s=0.05)
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        settings = settings.model_copy(update={
            "redis_url": server.url, "redis_prefix": f"t-{uuid.uuid4().hex[:8]}:"})
    spec = cluster(hosts=3)
    with TestClient(make_app(settings=settings)) as test_client:
        load_cluster(test_client, spec)
        test_client.hosts = [h.name for h in spec.hosts]  # type: ignore[attr-defined]
        _register(test_client, "prefill-0", "prefill", 0)
        yield test_client


def _register(client: TestClient, name: str, role: str, host: int) -> None:
    gpu = f"{client.hosts[host]}/gpu0"  # type: ignore[attr-defined]
    answer = client.post("/v1/workers", headers=bearer(WORKER),
                         json=worker_json(name, role, [gpu], model=MODEL))
    assert answer.status_code == 201, answer.text


def _get(client: TestClient, path: str) -> Any:
    answer = client.get(path, headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _route(client: TestClient, first: int, blocks: int, **extra: Any) -> Any:
    answer = client.post("/v1/route", headers=bearer(WORKER), json={
        "block_hashes": list(range(first, first + blocks)), "model": MODEL, **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _land(client: TestClient, routed: Any) -> None:
    """The decode side reports the request's transfer done: its KV landed."""
    decode = routed["decision"]["decode"]["worker"]
    answer = client.post(f"/v1/transfers/{routed['plan_id']}/report", headers=bearer(WORKER),
                         json={"plan_id": routed["plan_id"], "worker": decode,
                               "role": "initiator", "outcome": "ok", "bytes": 4,
                               "duration_s": 0.001})
    assert answer.status_code == 200 and answer.json()["state"] == "done", answer.text


def test_a_decode_worker_with_kv_promised_is_priced_as_fuller(client: TestClient) -> None:
    # decode-b: one request whose KV landed, 48 prompt blocks in use, nothing promised
    # (it writes one token: its context, 769 tokens, is about its blocks in use)
    _register(client, "decode-b", "decode", 2)
    landed = _route(client, 1000, 48, max_tokens=1)
    assert landed["decision"]["decode"]["worker"] == "decode-b"
    _land(client, landed)
    assert _get(client, "/v1/workers/decode-b/load")["blocks"] == 0
    # decode-a: one request of 40 blocks still on its way (the sidecar took its blocks
    # at once), its output promised: 40 + 16 blocks against decode-b's 48
    _register(client, "decode-a", "decode", 1)
    pending = _route(client, 2000, 40)
    assert pending["decision"]["decode"]["worker"] == "decode-a"
    assert pending["reservations"][1] == {"worker": "decode-a", "tokens": 0, "requests": 1,
                                          "blocks": OUTPUT_BLOCKS, "context": 640 + 128}
    assert _get(client, "/v1/workers/decode-a/load")["blocks"] == OUTPUT_BLOCKS
    # blind to the promise decode-a (40 blocks in use) would win; priced with it, not
    # (prompts past 512 tokens: never prefilled locally)
    assert _route(client, 3000, 40)["decision"]["decode"]["worker"] == "decode-b"
    _land(client, pending)
    assert _get(client, "/v1/workers/decode-a/load")["blocks"] == 0


def test_a_decode_worker_whose_requests_read_more_context_is_priced_as_heavier(
        client: TestClient) -> None:
    # decode-a: one landed request of 40 prompt blocks (640 tokens) that may write the
    # expected 256 tokens: it reads 640 + 128 tokens a step on average
    _register(client, "decode-a", "decode", 1)
    heavy = _route(client, 1000, 40, max_tokens=4096)
    assert heavy["decision"]["decode"]["worker"] == "decode-a"
    _land(client, heavy)
    # decode-b: one landed request of 41 blocks (656 tokens) that writes one token: a
    # block more in use than decode-a, but it reads 657 tokens a step
    _register(client, "decode-b", "decode", 2)
    light = _route(client, 2000, 41, max_tokens=1)
    assert light["decision"]["decode"]["worker"] == "decode-b"
    _land(client, light)
    assert [_get(client, f"/v1/workers/{w}/load")["context"]
            for w in ("decode-a", "decode-b")] == [768, 657]
    # priced by blocks in use decode-a would win; by the context each step reads, not
    assert _route(client, 3000, 40)["decision"]["decode"]["worker"] == "decode-b"
    # the request ends: its context goes back
    answer = client.post(f"/v1/reservations/{heavy['reservation_id']}/release",
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    assert _get(client, "/v1/workers/decode-a/load")["context"] == 0
