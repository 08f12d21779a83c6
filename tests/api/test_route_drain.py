"""Through the service, in memory and on a real Redis: a worker whose sidecar drains is
out of routing — ``POST /v1/route`` picks another pair, 503 when none is left — and
back in once it registers again; a drain announced on one replica is honoured by the
other's router."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.api.service_builders import (
    MOONCAKE_BLOCKS,
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    own_bearer,
    worker_json,
)
from tests.servers import RedisServer, redis_server

MODEL = "llama-3-70b"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def _settings(redis: RedisServer | None) -> Settings:
    if redis is None:
        return MOONCAKE_BLOCKS
    return MOONCAKE_BLOCKS.model_copy(update={
        "redis_url": redis.url, "redis_prefix": f"t-{uuid.uuid4().hex[:8]}:"})


@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """A replica over two hosts: prefill-0 on host 0, decode-0 and prefill-1 on host 1
    (prefill-1 shares decode-0's NVLink: the pair the router picks while both serve)."""
    redis = request.getfixturevalue("redis") if request.param == "redis" else None
    with TestClient(make_app(settings=_settings(redis))) as test_client:
        load_cluster(test_client, SPEC)
        for name, role, host, gpu in WORKERS:
            _register(test_client, name, role, host, gpu)
        yield test_client


SPEC = cluster(hosts=2)
#: (name, role, host index, GPU index)
WORKERS = (("prefill-0", "prefill", 0, 0), ("decode-0", "decode", 1, 0),
           ("prefill-1", "prefill", 1, 1))


def _register(client: TestClient, name: str, role: str, host: int, gpu: int) -> None:
    answer = client.post("/v1/workers", headers=bearer(WORKER), json=worker_json(
        name, role, [f"{SPEC.hosts[host].name}/gpu{gpu}"], model=MODEL))
    assert answer.status_code == 201, answer.text


def _again(client: TestClient, name: str) -> None:
    """``name`` registers again (as its restarted sidecar would)."""
    _register(client, *next(w for w in WORKERS if w[0] == name))


def _drain(client: TestClient, name: str) -> None:
    answer = client.post(f"/v1/sidecars/{name}/drain", headers=own_bearer(name))
    assert answer.status_code == 200 and answer.json()["draining"] is True, answer.text


def _route(client: TestClient, first: int = 11) -> Any:
    return client.post("/v1/route", headers=bearer(WORKER), json={
        "block_hashes": [first, first + 1, first + 2], "model": MODEL})


def _pair(client: TestClient, first: int = 11) -> tuple[str, str]:
    answer = _route(client, first)
    assert answer.status_code == 200, answer.text
    decision = answer.json()["decision"]
    return decision["prefill"]["worker"], decision["decode"]["worker"]


def _draining(client: TestClient) -> dict[str, bool]:
    listing = client.get("/v1/workers", headers=bearer(WORKER)).json()
    return {w["registration"]["name"]: w["draining"] for w in listing}


def _jobs(client: TestClient, name: str) -> list[Any]:
    jobs: list[Any] = client.get(f"/v1/sidecars/{name}/jobs", params={"wait_s": 0},
                                 headers=own_bearer(name)).json()["jobs"]
    return jobs


def test_a_draining_prefill_worker_is_skipped_until_it_registers_again(
        client: TestClient) -> None:
    assert _pair(client, 11) == ("prefill-1", "decode-0")
    _drain(client, "prefill-1")
    assert _draining(client) == {"prefill-0": False, "decode-0": False, "prefill-1": True}
    for first in (21, 31):  # again and again: it stays out, not only for one route
        answer = _route(client, first)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["decision"]["prefill"]["worker"] == "prefill-0", body
        assert [item["worker"] for item in body["reservations"]] == ["prefill-0", "decode-0"]
    assert _jobs(client, "prefill-1") == []
    _again(client, "prefill-1")
    assert _draining(client)["prefill-1"] is False
    assert _pair(client, 41) == ("prefill-1", "decode-0")


def test_a_draining_decode_worker_leaves_nothing_to_route_to_503_until_it_is_back(
        client: TestClient) -> None:
    loads = client.get("/v1/workers/decode-0/load", headers=bearer(WORKER)).json()
    _drain(client, "decode-0")
    answer = _route(client)
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"]
    assert answer.json()["reasons"][0].startswith(
        f"1 of the workers serving {MODEL} are draining (1: 1 decode)"), answer.text
    assert client.get("/v1/workers/decode-0/load", headers=bearer(WORKER)).json() == loads
    assert all(_jobs(client, name) == [] for name, *_ in WORKERS)
    _again(client, "decode-0")
    assert _pair(client)[1] == "decode-0"


def test_a_503_with_every_worker_draining_says_so_and_how_many(client: TestClient) -> None:
    for name, *_ in WORKERS:
        _drain(client, name)
    answer = _route(client)
    assert answer.status_code == 503, answer.text
    detail = (f"every worker serving {MODEL} on the fabric is draining (3: 1 decode, "
              "2 prefill); a draining worker takes no new request until its sidecar "
              "registers again")
    assert (answer.json()["detail"], answer.json()["reasons"]) == (detail, [detail])
    _again(client, "prefill-0")  # one back: the router's own reason follows the drains
    reasons = _route(client).json()["reasons"]
    assert reasons[0].startswith(f"2 of the workers serving {MODEL} are draining "
                                 "(2: 1 decode, 1 prefill)") and len(reasons) > 1, reasons


def test_a_drain_announced_on_one_replica_is_honoured_by_the_others_router(
        redis: RedisServer) -> None:
    settings = _settings(redis)
    with TestClient(make_app(settings=settings)) as a, \
            TestClient(make_app(settings=settings)) as b:
        load_cluster(a, SPEC)
        load_cluster(b, SPEC)  # (the same feeds: B serves the fabric at once)
        for name, role, host, gpu in WORKERS:
            _register(a, name, role, host, gpu)
        assert _pair(b, 11) == ("prefill-1", "decode-0")  # B's view is built and kept
        _drain(a, "prefill-1")
        assert _draining(b)["prefill-1"] is True
        assert _pair(b, 21) == ("prefill-0", "decode-0")
        assert _pair(b, 31) == ("prefill-0", "decode-0")
        _again(a, "prefill-1")
        assert _pair(b, 41) == ("prefill-1", "decode-0")
