"""Load reservations on the route path: reserved atomically, seen by policies, released
by id, expired when nobody releases them, and closed when their owner replica dies."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from scheduler.state.reservations import StoreUnavailableError
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    worker_json,
)
from tests.servers import RedisServer, redis_server
from topology.errors import ConflictError

#: Reservations that expire within a test.
SHORT_RESERVATIONS = Settings(reservation_ttl_s=0.5, expire_interval_s=0.05)


@contextmanager
def serving(settings: Settings | None = None, *, fabric: bool = True,
            workers: bool = True) -> Iterator[TestClient]:
    """A replica (lifespan and sweeps running) with a prefill and a decode worker."""
    spec = cluster(hosts=2)
    # the block hashes here stand for 512-token blocks (as in Mooncake traces)
    blocks512 = (settings or Settings()).model_copy(update={"block_tokens": 512})
    with TestClient(make_app(settings=blocks512)) as test_client:
        if fabric:
            load_cluster(test_client, spec)
        h0, h1 = (h.name for h in spec.hosts)
        for name, role, gpu in (("prefill-0", "prefill", f"{h0}/gpu0"),
                                ("decode-0", "decode", f"{h1}/gpu0")):
            if not workers:
                break
            answer = test_client.post("/v1/workers", json=worker_json(name, role, [gpu]),
                                      headers=bearer(WORKER))
            assert answer.status_code == 201, answer.text
        yield test_client


@pytest.fixture
def client() -> Iterator[TestClient]:
    with serving() as test_client:
        yield test_client


def _capacity(client: TestClient, worker: str, requests: int) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    client.portal.call(runtime.loads.set_capacity, worker, 10**9, requests)  # type: ignore[union-attr]


def _eventually(probe: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _route(client: TestClient, hashes: list[int]) -> dict[str, object]:
    answer = client.post("/v1/route", json={"block_hashes": hashes, "model": "llama-3-70b"},
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def _load(client: TestClient, worker: str) -> dict[str, int]:
    body: dict[str, int] = client.get(f"/v1/workers/{worker}/load",
                                      headers=bearer(WORKER)).json()
    return body


def _release(client: TestClient, reservation_id: object, body: object = None
             ) -> list[dict[str, object]]:
    answer = client.post(f"/v1/reservations/{reservation_id}/release", json=body,
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    released: list[dict[str, object]] = answer.json()["released"]
    return released


def test_routes_reserve_load_and_releasing_by_id_gives_it_back_once(client: TestClient) -> None:
    first = _route(client, [1, 2, 3])
    _route(client, [4, 5, 6])
    assert _load(client, "decode-0")["requests"] == 2
    assert _load(client, "prefill-0")["tokens"] == 2 * 3 * 512
    held = client.get(f"/v1/reservations/{first['reservation_id']}", headers=bearer(WORKER))
    assert held.status_code == 200 and held.json()["items"] == first["reservations"]
    assert held.json()["owner"] == client.app.state.runtime.replica_id  # type: ignore[attr-defined]
    # the sidecar takes the prompt's blocks at once: one 512-token block of output promised
    assert _load(client, "decode-0")["blocks"] == 2
    prefill = _release(client, first["reservation_id"], {"workers": ["prefill-0"]})
    assert [(item["worker"], item["blocks"]) for item in prefill] == [
        ("prefill-0", 0), ("decode-0", 1)]  # the KV landed (the default): promise kept
    assert _load(client, "prefill-0")["tokens"] == 3 * 512
    assert _load(client, "decode-0")["blocks"] == 1
    assert [item["worker"] for item in _release(client, first["reservation_id"])] == \
        ["decode-0"]
    assert _release(client, first["reservation_id"]) == []  # a second release: nothing
    assert _load(client, "decode-0")["requests"] == 1
    gone = client.get(f"/v1/reservations/{first['reservation_id']}", headers=bearer(WORKER))
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"


def test_a_renewed_reservation_outlives_its_first_lifetime() -> None:
    with serving(SHORT_RESERVATIONS) as client:
        routed = _route(client, [1, 2])
        renewed = client.post(f"/v1/reservations/{routed['reservation_id']}/renew",
                              json={"ttl_s": 30}, headers=bearer(WORKER))
        assert renewed.status_code == 200, renewed.text
        time.sleep(1.0)
        assert _load(client, "decode-0")["requests"] == 1
        missing = client.post("/v1/reservations/rsv-nope/renew", headers=bearer(WORKER))
        assert missing.status_code == 404


def test_without_any_release_the_load_expires_and_routing_goes_on() -> None:
    with serving(SHORT_RESERVATIONS) as client:
        _capacity(client, "decode-0", 3)
        for i in range(3):
            _route(client, [10 * i + 1, 10 * i + 2])
        full = client.post("/v1/route", json={"block_hashes": [99], "model": "llama-3-70b"},
                           headers=bearer(WORKER))
        assert full.status_code == 503
        _eventually(lambda: _load(client, "decode-0")["requests"] == 0,
                    "the unreleased reservations expired")
        assert _load(client, "prefill-0")["tokens"] == 0
        for i in range(3):
            _route(client, [10 * i + 5, 10 * i + 6])


def test_a_worker_at_capacity_is_unschedulable(client: TestClient) -> None:
    _capacity(client, "decode-0", 1)
    _route(client, [7, 8])
    answer = client.post("/v1/route", json={"block_hashes": [9, 10], "model": "llama-3-70b"},
                         headers=bearer(WORKER))
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert _load(client, "decode-0")["requests"] == 1


def test_unknown_worker_load_is_404(client: TestClient) -> None:
    answer = client.get("/v1/workers/ghost/load", headers=bearer(WORKER))
    assert answer.status_code == 404


def test_a_route_whose_transfer_may_have_been_queued_keeps_its_load(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app.state.coordinator.store  # type: ignore[attr-defined]
    stored = store.start_transfer

    async def stored_then_lost(*args: object) -> None:
        await stored(*args)  # queued, then the answer is lost (a Redis timeout, say)
        raise StoreUnavailableError("start_transfer", "timed out")
    monkeypatch.setattr(store, "start_transfer", stored_then_lost)
    answer = client.post("/v1/route", json={"block_hashes": [21, 22], "model": "llama-3-70b"},
                         headers=bearer(WORKER))
    assert answer.status_code == 503
    assert _load(client, "decode-0")["requests"] == 1  # the transfer may run: still counted


def test_a_refused_transfer_gives_its_load_back(client: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app.state.coordinator.store  # type: ignore[attr-defined]

    async def refused(*args: object) -> None:
        raise ConflictError("transfer 'x' already exists")
    monkeypatch.setattr(store, "start_transfer", refused)
    answer = client.post("/v1/route", json={"block_hashes": [23, 24], "model": "llama-3-70b"},
                         headers=bearer(WORKER))
    assert answer.status_code == 409
    assert _load(client, "decode-0")["requests"] == 0


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.mark.process
@pytest.mark.timeout(60)
def test_a_dead_replicas_reservations_are_closed_by_the_survivor(redis: RedisServer) -> None:
    shared = Settings(redis_url=redis.url, redis_prefix=f"t-{uuid.uuid4().hex[:8]}:",
                      shared_poll_s=0.1, replica_lease_ttl_s=2.0, expire_interval_s=0.05)
    with serving(shared) as survivor:
        with serving(shared, fabric=False, workers=False) as doomed:
            _eventually(lambda: doomed.get("/v1/topology/fabric",
                                           headers=bearer(WORKER)).status_code == 200,
                        "the second replica follows the fabric")
            routed = [_route(doomed, [20 + i]) for i in range(4)]
            assert _load(survivor, "decode-0")["requests"] == 4
            kept = _route(survivor, [30])
        # the doomed replica stopped: its owner lease lapses, the survivor's sweep
        # closes its four reservations and keeps its own
        _eventually(lambda: _load(survivor, "decode-0")["requests"] == 1,
                    "the dead replica's reservations were closed")
        for body in routed:
            assert survivor.get(f"/v1/reservations/{body['reservation_id']}",
                                headers=bearer(WORKER)).status_code == 404
        assert survivor.get(f"/v1/reservations/{kept['reservation_id']}",
                            headers=bearer(WORKER)).status_code == 200
