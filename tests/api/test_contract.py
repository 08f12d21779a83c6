"""The API contract: problem+json for every error, an OpenAPI document that says so,
capture uploads a generated client can make, strict numbers, quiet outages."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    make_app,
    target,
    worker_json,
)
from tests.servers import RedisServer, start_redis
from topology.writers import lldp_json0

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def client() -> TestClient:
    with TestClient(make_app()) as test_client:
        yield test_client


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/no-such-thing", 404), ("PUT", "/v1/workers", 405),
    ("GET", "/no-such-page", 404)])
def test_the_frameworks_own_answers_are_problems(client: TestClient, method: str, path: str,
                                                 status: int) -> None:
    answer = client.request(method, path, headers=bearer())
    assert answer.status_code == status
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["status"] == status
    if status == 405:
        assert answer.headers["allow"]


def test_invalid_json_is_a_422_problem_naming_the_position(client: TestClient) -> None:
    answer = client.post("/v1/workers", content=b'{"name": ', headers={
        **bearer(), "Content-Type": "application/json"})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["errors"][0]["path"].startswith("body")


def test_openapi_declares_every_error_answer_as_a_problem(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert "Problem" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path.startswith("/v1/"):
                assert {"401", "403", "404", "422", "500"} <= set(responses), (method, path)
            for code, answer in responses.items():
                if code[0] in "45":
                    assert set(answer["content"]) == {PROBLEM}, (method, path, code)
                    assert answer["content"][PROBLEM]["schema"] == {
                        "$ref": "#/components/schemas/Problem"}
            if "requestBody" in operation and path.startswith("/v1/"):
                assert {"408", "413"} <= set(responses), (method, path)


def test_json_captures_are_declared_as_documents_and_accepted_as_such(
        client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path in ("/v1/topology/hosts/{host}/lldp", "/v1/topology/k8s-nodes"):
        content = document["paths"][path]["put"]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"type": "object"}, path
    host = cluster(hosts=1).hosts[0]
    # what a client generated from that schema sends: the document itself
    answer = client.put(f"/v1/topology/hosts/{host.name}/lldp",
                        json=json.loads(lldp_json0(host)), headers=bearer())
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(("path", "body", "where"), [
    ("/v1/workers", {**worker_json("w", "decode", []), "device_id": True}, "body.device_id"),
    ("/v1/transfers", {"src": "a", "dst": "b", "src_blocks": [0, True]}, "body.src_blocks.1"),
    ("/v1/placement/solve", {**target(), "prefill": True}, "body.prefill")])
def test_booleans_are_not_numbers(client: TestClient, path: str, body: dict[str, object],
                                  where: str) -> None:
    answer = client.post(path, json=body, headers=bearer())
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert [e["path"] for e in answer.json()["errors"]] == [where]


def test_booleans_stay_booleans_where_the_schema_wants_them(client: TestClient) -> None:
    report = {"plan_id": "nope", "worker": "w", "role": "target", "outcome": "ok",
              "verified": True}
    answer = client.post("/v1/transfers/nope/report", json=report, headers=bearer())
    assert answer.status_code == 404, answer.text  # got past validation to the lookup


# -- Redis: no persistence is said at start-up; an outage is logged once ------------------

def _redis_settings(redis: RedisServer) -> Settings:
    return Settings(redis_url=redis.url, redis_prefix=f"t-{uuid.uuid4().hex[:8]}:",
                    expire_interval_s=0.05, shared_poll_s=0.05)


@pytest.mark.process
def test_start_up_warns_when_redis_keeps_nothing(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    for data_dir, warned in ((None, True), (tmp_path, False)):
        redis = start_redis(data_dir=data_dir)
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING), \
                    TestClient(make_app(settings=_redis_settings(redis))):
                pass
            found = [r for r in caplog.records if "Redis has no persistence" in r.message]
            assert bool(found) is warned, caplog.text
        finally:
            redis.stop()


@pytest.mark.process
@pytest.mark.timeout(60)
def test_a_redis_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    redis = start_redis()
    try:
        with caplog.at_level(logging.WARNING), \
                TestClient(make_app(settings=_redis_settings(redis))) as client:
            assert client.post("/v1/workers", json=worker_json("w", "decode", []),
                               headers=bearer(WORKER)).status_code == 201
            caplog.clear()
            redis.stop()
            time.sleep(2.0)  # ~40 sweep rounds at 0.05 s
            redis = start_redis(port=redis.port)
            _wait_for(lambda: "lease sweep works again" in caplog.text)
    finally:
        redis.stop()
    sweep = [r.message for r in caplog.records if r.message.startswith("lease sweep")]
    assert len(sweep) == 2, caplog.text
    assert sweep[0].startswith("lease sweep failed") and "works again" in sweep[1]
    assert not any(r.exc_info for r in caplog.records), "no tracebacks for an outage"
    assert len(caplog.records) < 12, caplog.text  # not one per round (~40 rounds each)


def _wait_for(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_body_nested_too_deep_is_a_problem_not_a_crash(client: TestClient) -> None:
    deep = b"[" * 100_000 + b"true" + b"]" * 100_000
    answer = client.post("/v1/transfers", content=deep, headers={
        **bearer(), "Content-Type": "application/json"})
    assert 400 <= answer.status_code < 500
    assert answer.headers["content-type"] == PROBLEM
