"""Placement jobs: 202 + id, progress and result; the placement in force; applying one."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.service_builders import WORKER, bearer, cluster, load_cluster, make_app, target


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        load_cluster(test_client, cluster())
        yield test_client


def _finished(client: TestClient, job_id: str) -> Any:
    for _ in range(300):
        job = client.get(f"/v1/placement/jobs/{job_id}", headers=bearer(WORKER)).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_solve_job_runs_to_a_placement_in_force(client: TestClient) -> None:
    assert client.get("/v1/placement", headers=bearer()).status_code == 404
    accepted = client.post("/v1/placement/solve", json=target(), headers=bearer())
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["job"]["status"] in ("queued", "running")
    assert body["location"] == f"/v1/placement/jobs/{body['job']['id']}"
    job = _finished(client, body["job"]["id"])
    assert job["status"] == "done", job["error"]
    assert job["progress"], "the solver's progress lines are kept"
    roles = sorted(i["role"] for i in job["result"]["instances"])
    assert roles == ["decode", "decode", "prefill", "prefill"]
    current = client.get("/v1/placement", headers=bearer(WORKER)).json()
    assert current["origin"] == "solve" and current["placement"] == job["result"]


def test_an_impossible_solve_fails_with_reasons(client: TestClient) -> None:
    accepted = client.post("/v1/placement/solve", json=target(prefill=6, decode=6),
                           headers=bearer()).json()
    job = _finished(client, accepted["job"]["id"])
    assert job["status"] == "failed" and job["error"]
    assert client.get("/v1/placement", headers=bearer()).status_code == 404


def test_applying_a_valid_placement_puts_it_in_force(client: TestClient) -> None:
    accepted = client.post("/v1/placement/solve", json=target(), headers=bearer()).json()
    placement = _finished(client, accepted["job"]["id"])["result"]
    answer = client.put("/v1/placement", json={"placement": placement, "target": target()},
                        headers=bearer())
    assert answer.status_code == 200, answer.text
    assert answer.json()["origin"] == "apply"


def test_applying_a_broken_placement_is_422_with_violations(client: TestClient) -> None:
    accepted = client.post("/v1/placement/solve", json=target(), headers=bearer()).json()
    placement = _finished(client, accepted["job"]["id"])["result"]
    first, second = placement["instances"][:2]
    overlapping = {**second, "gpus": first["gpus"]}
    broken = {**placement, "instances": [first, overlapping, *placement["instances"][2:]]}
    answer = client.put("/v1/placement", json={"placement": broken, "target": target()},
                        headers=bearer())
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"]
    assert client.get("/v1/placement", headers=bearer()).json()["origin"] == "solve"


def test_workers_may_read_but_not_solve_or_apply(client: TestClient) -> None:
    assert client.post("/v1/placement/solve", json=target(),
                       headers=bearer(WORKER)).status_code == 403
    assert client.put("/v1/placement", json={}, headers=bearer(WORKER)).status_code == 403
    assert client.get("/v1/placement/jobs", headers=bearer(WORKER)).status_code == 200


def test_bad_targets_are_422_and_unknown_jobs_404(client: TestClient) -> None:
    answer = client.post("/v1/placement/solve", json=target(tp_prefill=0), headers=bearer())
    assert answer.status_code == 422
    assert any(e["path"].endswith("tp_prefill") for e in answer.json()["errors"])
    assert client.get("/v1/placement/jobs/place-999", headers=bearer()).status_code == 404


def test_solving_needs_a_fabric() -> None:
    with TestClient(make_app()) as empty:
        answer = empty.post("/v1/placement/solve", json=target(), headers=bearer())
        assert answer.status_code == 404
