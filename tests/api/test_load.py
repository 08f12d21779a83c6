"""Load reservations on the route path: reserved atomically, seen by policies, released."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from scheduler.state.reservations import StoreUnavailableError
from tests.api.service_builders import (
    MOONCAKE_BLOCKS,
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    worker_json,
)
from topology.errors import ConflictError


@pytest.fixture
def client() -> Iterator[TestClient]:
    spec = cluster(hosts=2)
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as test_client:
        load_cluster(test_client, spec)
        h0, h1 = (h.name for h in spec.hosts)
        for name, role, gpu in (("prefill-0", "prefill", f"{h0}/gpu0"),
                                ("decode-0", "decode", f"{h1}/gpu0")):
            answer = test_client.post("/v1/workers", json=worker_json(name, role, [gpu]),
                                      headers=bearer(WORKER))
            assert answer.status_code == 201, answer.text
        yield test_client


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


def test_routes_reserve_load_and_release_gives_it_back(client: TestClient) -> None:
    first = _route(client, [1, 2, 3])
    _route(client, [4, 5, 6])
    assert _load(client, "decode-0")["requests"] == 2
    assert _load(client, "prefill-0")["tokens"] == 2 * 3 * 512
    reservations = first["reservations"]
    assert isinstance(reservations, list)
    for item in reservations:
        answer = client.post(f"/v1/workers/{item['worker']}/load/release",
                             json={"tokens": item["tokens"], "requests": item["requests"]},
                             headers=bearer(WORKER))
        assert answer.status_code == 204
    assert _load(client, "decode-0")["requests"] == 1


def test_a_worker_at_capacity_is_unschedulable(client: TestClient) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    asyncio.run(runtime.loads.set_capacity("decode-0", 10**9, 1))
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
