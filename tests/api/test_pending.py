"""``GET /v1/sidecars/{name}/pending``: what a draining sidecar waits for."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.service_builders import (
    MOONCAKE_BLOCKS,
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    own_bearer,
    register_pair,
)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as test_client:
        spec = cluster(hosts=2)
        load_cluster(test_client, spec)
        register_pair(test_client, spec)
        yield test_client


def _pending(client: TestClient, name: str, **params: float) -> int:
    answer = client.get(f"/v1/sidecars/{name}/pending", params=params,
                        headers=own_bearer(name))
    assert answer.status_code == 200, answer.text
    count: int = answer.json()["pending"]
    return count


def test_pending_counts_the_transfers_of_a_worker_not_ended_yet(client: TestClient) -> None:
    assert _pending(client, "prefill-0") == 0
    submitted = client.post("/v1/transfers", headers=bearer(), json={
        "src": "prefill-0", "dst": "decode-0", "src_blocks": [0, 1], "plan_id": "p1"})
    assert submitted.status_code == 201, submitted.text
    assert _pending(client, "prefill-0") == 1 and _pending(client, "decode-0") == 1
    # Created after the moment given: not counted (a draining worker does not wait for it).
    created = submitted.json()["created_at"]
    assert _pending(client, "prefill-0", created_before=created) == 0
    assert _pending(client, "prefill-0", created_before=time.time() + 1) == 1
    report = client.post("/v1/transfers/p1/report", headers=own_bearer("decode-0"), json={
        "plan_id": "p1", "worker": "decode-0", "role": "initiator", "outcome": "ok"})
    assert report.status_code == 200, report.text
    assert _pending(client, "prefill-0") == 0


def test_pending_of_an_unknown_or_another_worker_is_refused(client: TestClient) -> None:
    unknown = client.get("/v1/sidecars/nobody/pending", headers=bearer())
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    other = client.get("/v1/sidecars/decode-0/pending", headers=own_bearer("prefill-0"))
    assert other.status_code == 403
    bad = client.get("/v1/sidecars/prefill-0/pending", params={"created_before": "soon"},
                     headers=bearer())
    assert bad.status_code == 422


# -- POST /v1/sidecars/{name}/drain: a draining worker takes no new transfer ----------


def _drain(client: TestClient, name: str) -> dict[str, object]:
    answer = client.post(f"/v1/sidecars/{name}/drain", headers=own_bearer(name))
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def _listed_draining(client: TestClient) -> dict[str, bool]:
    return {w["registration"]["name"]: w["draining"]
            for w in client.get("/v1/workers", headers=bearer()).json()}


def _refused(answer: httpx.Response, worker: str) -> None:
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    detail = answer.json()["detail"]
    assert repr(worker) in detail and "draining" in detail, detail


def test_a_draining_worker_takes_no_new_transfer_on_either_side(client: TestClient) -> None:
    submitted = client.post("/v1/transfers", headers=bearer(), json={
        "src": "prefill-0", "dst": "decode-0", "src_blocks": [0, 1], "plan_id": "before"})
    assert submitted.status_code == 201, submitted.text
    free_before = {w["registration"]["name"]: w["free_blocks"]
                   for w in client.get("/v1/workers", headers=bearer()).json()}
    assert _drain(client, "prefill-0") == {"worker": "prefill-0", "epoch": 1, "draining": True}
    assert _listed_draining(client) == {"prefill-0": True, "decode-0": False}
    _refused(client.post("/v1/transfers", headers=bearer(), json={
        "src": "prefill-0", "dst": "decode-0", "src_blocks": [2], "plan_id": "as-src"}),
        "prefill-0")
    _refused(client.post("/v1/transfers", headers=bearer(), json={
        "src": "decode-0", "dst": "prefill-0", "src_blocks": [3], "plan_id": "as-dst"}),
        "prefill-0")
    # Refused before anything was taken or stored.
    for plan_id in ("as-src", "as-dst"):
        assert client.get(f"/v1/transfers/{plan_id}", headers=bearer()).status_code == 404
    assert {w["registration"]["name"]: w["free_blocks"]
            for w in client.get("/v1/workers", headers=bearer()).json()} == free_before
    # The pending one goes on and ends as usual; the drain waits for it.
    assert _pending(client, "prefill-0") == 1
    report = client.post("/v1/transfers/before/report", headers=own_bearer("decode-0"), json={
        "plan_id": "before", "worker": "decode-0", "role": "initiator", "outcome": "ok"})
    assert report.status_code == 200 and report.json()["state"] == "done", report.text
    assert _pending(client, "prefill-0") == 0
    # Heartbeats keep the mark.
    beat = client.post("/v1/workers/prefill-0/heartbeat", headers=own_bearer("prefill-0"))
    assert beat.status_code == 200, beat.text
    assert _listed_draining(client)["prefill-0"] is True


def test_drain_is_idempotent_and_a_new_registration_clears_it(client: TestClient) -> None:
    first, again = _drain(client, "prefill-0"), _drain(client, "prefill-0")
    assert first == again == {"worker": "prefill-0", "epoch": 1, "draining": True}
    spec = cluster(hosts=2)
    register_pair(client, spec)  # both register again (epoch 2)
    assert _listed_draining(client) == {"prefill-0": False, "decode-0": False}
    submitted = client.post("/v1/transfers", headers=bearer(), json={
        "src": "prefill-0", "dst": "decode-0", "src_blocks": [0], "plan_id": "after"})
    assert submitted.status_code == 201, submitted.text


def test_drain_of_an_unknown_or_another_worker_is_refused(client: TestClient) -> None:
    unknown = client.post("/v1/sidecars/nobody/drain", headers=bearer())
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    other = client.post("/v1/sidecars/decode-0/drain", headers=own_bearer("prefill-0"))
    assert other.status_code == 403
    assert other.headers["content-type"] == "application/problem+json"
    shared = client.post("/v1/sidecars/decode-0/drain", headers=bearer(WORKER))
    assert shared.status_code == 403
    assert _listed_draining(client) == {"prefill-0": False, "decode-0": False}
