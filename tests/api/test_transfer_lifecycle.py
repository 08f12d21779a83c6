"""Through the service: transfers nobody reports expire by their deadline and give every
block and the route's load back; a done transfer's blocks come back when the decode
side releases it, with the rest of the route's reservation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    own_bearer,
    worker_json,
)

BLOCKS = 8
MODEL = "llama-3-70b"


@pytest.fixture
def client() -> Iterator[TestClient]:
    spec = cluster(hosts=2)
    # block hashes here stand for 512-token blocks (Mooncake traces): no local prefill
    settings = Settings(block_tokens=512, transfer_deadline_s=1.0, expire_interval_s=0.05)
    with TestClient(make_app(settings=settings)) as test_client:
        load_cluster(test_client, spec)
        h0, h1 = (h.name for h in spec.hosts)
        for name, role, gpu in (("prefill-0", "prefill", f"{h0}/gpu0"),
                                ("decode-0", "decode", f"{h1}/gpu0")):
            answer = test_client.post("/v1/workers", headers=bearer(WORKER), json=worker_json(
                name, role, [gpu], num_blocks=BLOCKS, model=MODEL))
            assert answer.status_code == 201, answer.text
        yield test_client


def _get(client: TestClient, path: str) -> Any:
    answer = client.get(path, headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _route(client: TestClient, first: int, blocks: int = 4) -> Any:
    return client.post("/v1/route", headers=bearer(WORKER), json={
        "block_hashes": list(range(first, first + blocks)), "model": MODEL})


def _free(client: TestClient) -> dict[str, int]:
    return {w["registration"]["name"]: w["free_blocks"] for w in _get(client, "/v1/workers")}


def _eventually(probe: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_transfers_nobody_reports_expire_and_give_everything_back(client: TestClient) -> None:
    routed = [_route(client, 100 * i) for i in range(2)]
    assert [r.status_code for r in routed] == [200, 200]
    assert _free(client) == {"prefill-0": 0, "decode-0": 0}
    assert _route(client, 900).status_code == 503  # every block is taken
    started = time.monotonic()
    plan_ids = [r.json()["plan_id"] for r in routed]
    _eventually(lambda: all(_get(client, f"/v1/transfers/{p}")["state"] == "expired"
                            for p in plan_ids), "the transfers expired")
    assert time.monotonic() - started < 1.0 + 1.0 + 1.0  # deadline + grace + sweeps
    records = [_get(client, f"/v1/transfers/{p}") for p in plan_ids]
    assert all(r["recompute"] and "deadline" in r["error"] for r in records)
    # the source blocks at once, the destination's after their quarantine
    _eventually(lambda: _free(client) == {"prefill-0": BLOCKS, "decode-0": BLOCKS},
                "every block is free again")
    assert _get(client, "/v1/workers/prefill-0/load")["tokens"] == 0  # prefill part ended
    assert _get(client, "/v1/workers/decode-0/load")["requests"] == 2  # requests still run
    metrics = client.get("/metrics").text
    assert 'toposched_transfers_total{tier="same_leaf",outcome="expired"} 2' in metrics
    assert _route(client, 500).status_code == 200  # and routing goes on


def test_releasing_a_done_transfer_frees_its_blocks_and_ends_its_reservation(
        client: TestClient) -> None:
    body = _route(client, 1).json()
    plan_id, reservation = body["plan_id"], body["reservation_id"]
    answer = client.post(f"/v1/transfers/{plan_id}/report", headers=bearer(WORKER), json={
        "plan_id": plan_id, "worker": "decode-0", "role": "initiator", "outcome": "ok",
        "bytes": 4, "duration_s": 0.001})
    assert answer.json()["state"] == "done"
    assert _free(client) == {"prefill-0": BLOCKS, "decode-0": BLOCKS - 4}
    assert _get(client, "/v1/workers/prefill-0/load")["requests"] == 0
    # the KV landed: the blocks promised to decode-0 are given back with the prefill part,
    # and the request's context counts there from now on
    context = body["reservations"][-1]["context"]
    assert _get(client, f"/v1/reservations/{reservation}")["items"] == [
        {"worker": "decode-0", "tokens": 0, "requests": 1, "blocks": 0, "context": context}]
    assert _get(client, "/v1/workers/decode-0/load")["blocks"] == 0
    assert _get(client, "/v1/workers/decode-0/load")["context"] == context > 0
    wrong = client.post(f"/v1/transfers/{plan_id}/release", headers=bearer(),
                        json={"worker": "prefill-0"})
    assert wrong.status_code == 422  # not the destination
    stranger = client.post(f"/v1/transfers/{plan_id}/release", headers=own_bearer("prefill-0"),
                           json={"worker": "decode-0"})
    assert stranger.status_code == 403  # a worker's own token releases its own only
    for expected in (True, False):  # a second release gives nothing back twice
        answer = client.post(f"/v1/transfers/{plan_id}/release", json={"worker": "decode-0"},
                             headers=own_bearer("decode-0"))
        assert answer.status_code == 200 and answer.json() == {"blocks_released": expected}
    assert _free(client) == {"prefill-0": BLOCKS, "decode-0": BLOCKS}
    assert _get(client, "/v1/workers/decode-0/load")["requests"] == 0
    assert _get(client, "/v1/workers/decode-0/load")["context"] == 0
    gone = client.get(f"/v1/reservations/{reservation}", headers=bearer(WORKER))
    assert gone.status_code == 404
