"""Route: a decision over registered workers, its plan queued for the sidecars."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import api.decide
import api.routers.route
from scheduler.state.base import WorkerDrainingError
from tests.api.service_builders import (
    MOONCAKE_BLOCKS,
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    own_bearer,
    register_pair,
    worker_json,
)
from topology.spec import FabricSpec


@pytest.fixture
def spec() -> FabricSpec:
    return cluster(hosts=2)


@pytest.fixture
def client(spec: FabricSpec) -> Iterator[TestClient]:
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as test_client:
        load_cluster(test_client, spec)
        register_pair(test_client, spec)
        yield test_client


def test_route_decides_and_queues_the_plan_for_both_sidecars(client: TestClient) -> None:
    answer = client.post("/v1/route", json={"block_hashes": [11, 12, 13],
                                            "model": "llama-3-70b"}, headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    decision = body["decision"]
    assert (decision["prefill"]["worker"], decision["decode"]["worker"]) == (
        "prefill-0", "decode-0")
    assert decision["transfer"]["blocks"] == 3
    plan_id = body["plan_id"]
    jobs = {name: client.get(f"/v1/sidecars/{name}/jobs", params={"wait_s": 0},
                             headers=own_bearer(name)).json()["jobs"]
            for name in ("prefill-0", "decode-0")}
    kinds = sorted(job["kind"] for batch in jobs.values() for job in batch)
    assert kinds == ["execute"]  # the prefill side is a passive READ target: no await
    assert all(job["plan_id"] == plan_id for batch in jobs.values() for job in batch)
    record = client.get(f"/v1/transfers/{plan_id}", headers=bearer(WORKER)).json()
    assert len(record["plan"]["src_blocks"]) == 3


def test_a_worker_that_starts_draining_after_the_decision_is_routed_around(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # The router leaves draining workers out (tests/api/test_route_drain.py); one that
    # starts draining between the decision and its transfer is refused when the
    # transfer takes its blocks, and the route decides again without it.
    decide = api.routers.route.decide
    decided: list[str] = []

    async def then_drained(*args: Any, **kwargs: Any) -> Any:
        result, snapshot = await decide(*args, **kwargs)
        decided.append(result.prefill.worker)
        if len(decided) == 1:
            await client.app.state.coordinator.drain("prefill-0")  # type: ignore[attr-defined]
        return result, snapshot

    monkeypatch.setattr(api.routers.route, "decide", then_drained)
    before = {name: client.get(f"/v1/workers/{name}/load", headers=bearer(WORKER)).json()
              for name in ("prefill-0", "decode-0")}
    answer = client.post("/v1/route", json={"block_hashes": [11, 12, 13],
                                            "model": "llama-3-70b"}, headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    assert decided == ["prefill-0", "decode-0"]  # decided again: decode-0 prefills locally
    body = answer.json()
    assert body["decision"]["mode"] == "local-prefill" and body["plan_id"] is None
    assert [item["worker"] for item in body["reservations"]] == ["decode-0"]
    # the first decision's reservation was closed: prefill-0 holds nothing
    assert client.get("/v1/workers/prefill-0/load",
                      headers=bearer(WORKER)).json() == before["prefill-0"]
    for name in ("prefill-0", "decode-0"):
        assert client.get(f"/v1/sidecars/{name}/jobs", params={"wait_s": 0},
                          headers=own_bearer(name)).json()["jobs"] == []


def test_a_route_refused_for_draining_on_every_try_gets_409_and_reserves_nothing(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[str] = []

    async def always_draining(coordinator: Any, decision: Any, reservation_id: str) -> Any:
        tries.append(reservation_id)
        raise WorkerDrainingError("prefill-0")

    monkeypatch.setattr(api.routers.route, "deliver_plan", always_draining)
    loads = client.get("/v1/workers/decode-0/load", headers=bearer(WORKER)).json()
    answer = client.post("/v1/route", json={"block_hashes": [11, 12, 13],
                                            "model": "llama-3-70b"}, headers=bearer(WORKER))
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "'prefill-0' is draining" in answer.json()["detail"]
    assert len(tries) == api.routers.route.DRAIN_ATTEMPTS == len(set(tries))
    assert client.get("/v1/workers/decode-0/load", headers=bearer(WORKER)).json() == loads


def test_a_worker_registered_again_between_taking_blocks_and_storing_is_refused(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    store = client.app.state.coordinator.store  # type: ignore[attr-defined]
    take_blocks = store.take_blocks
    taken_again: list[int] = []

    async def then_registered_again(counts: Any) -> Any:
        grants = await take_blocks(counts)
        registration = grants["prefill-0"].entry.registration
        await store.register_worker(registration, 30.0)  # a new epoch, every block free
        # the new registration hands out the same block ids to another transfer
        taken_again.extend((await take_blocks({"prefill-0": 3}))["prefill-0"].blocks)
        return grants

    monkeypatch.setattr(store, "take_blocks", then_registered_again)
    loads = client.get("/v1/workers/decode-0/load", headers=bearer(WORKER)).json()
    answer = client.post("/v1/route", json={"block_hashes": [11, 12, 13],
                                            "model": "llama-3-70b"}, headers=bearer(WORKER))
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "'prefill-0' registered again" in answer.json()["detail"]
    assert client.get("/v1/workers/decode-0/load", headers=bearer(WORKER)).json() == loads
    assert taken_again == [0, 1, 2]
    free = {w["registration"]["name"]: w["free_blocks"]
            for w in client.get("/v1/workers", headers=bearer(WORKER)).json()}
    # decode-0's blocks went back; prefill-0's old ones did not free the new ones
    assert free == {"prefill-0": 256 - 3, "decode-0": 256}
    for name in ("prefill-0", "decode-0"):
        assert client.get(f"/v1/sidecars/{name}/jobs", params={"wait_s": 0},
                          headers=own_bearer(name)).json()["jobs"] == []


def test_route_hashes_tokens_and_records_latency(client: TestClient) -> None:
    answer = client.post("/v1/route", json={"tokens": list(range(1100)), "model":
                                            "llama-3-70b", "session": "chat-1"},
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    assert answer.json()["decision"]["transfer"]["blocks"] == 2  # 1100 tokens / 512
    metrics = client.get("/metrics").text.splitlines()
    assert "toposched_routing_decision_seconds_count 1" in metrics
    total = next(line for line in metrics if line.startswith("toposched_routing_decision"
                                                             "_seconds_sum"))
    assert float(total.rsplit(" ", 1)[1]) > 0


def test_no_worker_for_the_model_is_503_with_reasons(client: TestClient) -> None:
    answer = client.post("/v1/route", json={"block_hashes": [1], "model": "other-model"},
                         headers=bearer(WORKER))
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["reasons"] == ["no registered worker on the fabric serves other-model"]


def test_no_decode_capacity_is_503_problem(spec: FabricSpec) -> None:
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as client:
        load_cluster(client, spec)
        gpus = [f"{spec.hosts[0].name}/gpu0"]
        client.post("/v1/workers", json=worker_json("only-prefill", "prefill", gpus),
                    headers=bearer(WORKER))
        answer = client.post("/v1/route", json={"block_hashes": [1], "model": "llama-3-70b"},
                             headers=bearer(WORKER))
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"]
        assert answer.json()["reasons"]


@pytest.mark.parametrize("body", [
    {"model": "llama-3-70b"},
    {"model": "llama-3-70b", "tokens": [1], "block_hashes": [1]},
    {"model": "llama-3-70b", "block_hashes": [-1]},
    {"block_hashes": [1]},
    {"model": "llama-3-70b", "block_hashes": []},
])
def test_bad_route_requests_are_422_problem(client: TestClient, body: dict[str, object]) -> None:
    answer = client.post("/v1/route", json=body, headers=bearer(WORKER))
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("value", [True, False, "3", 2.0, 2.5, 0, -1, 1 << 25])
def test_a_bad_max_tokens_is_422_naming_it(client: TestClient, value: object) -> None:
    # parsed by the route itself (not FastAPI): a JSON boolean is no count of tokens
    answer = client.post("/v1/route", json={"block_hashes": [1], "model": "llama-3-70b",
                                            "max_tokens": value}, headers=bearer(WORKER))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert [e["path"] for e in answer.json()["errors"]] == ["body.max_tokens"]


def test_route_needs_a_token(client: TestClient) -> None:
    answer = client.post("/v1/route", json={"block_hashes": [1], "model": "llama-3-70b"})
    assert answer.status_code == 401


@pytest.mark.parametrize(("yield_from", "yields"), [(256, 0), (2, 3)])
def test_a_decision_yields_to_the_loop_only_over_many_workers(
        client: TestClient, monkeypatch: pytest.MonkeyPatch, yield_from: int,
        yields: int) -> None:
    """Between its passes over the workers a decision lets other tasks run, from
    YIELD_FROM workers on (here 2: the pair registered); below, it does not yield. The
    memory store is read through its journals (no listing), so the first decision
    learns the size from its snapshot: it yields after it only, the second twice."""
    counted: list[int] = []

    async def counting() -> None:
        counted.append(1)
        await asyncio.sleep(0)

    monkeypatch.setattr(api.decide, "YIELD_FROM", yield_from)
    monkeypatch.setattr(api.decide, "let_others_run", counting)
    for _ in range(2):
        answer = client.post("/v1/route", json={"block_hashes": [11, 12, 13],
                                                "model": "llama-3-70b"}, headers=bearer(WORKER))
        assert answer.status_code == 200, answer.text
    assert len(counted) == yields
