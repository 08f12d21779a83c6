"""``GET /v1/sidecars/{name}/pending``: what a draining sidecar waits for."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.api.service_builders import (
    MOONCAKE_BLOCKS,
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
