"""The control plane over HTTP (in process): endpoints and problem+json errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from tests.scheduler.transfer.builders import registration

PROBLEM = "application/problem+json"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(lease_ttl_s=30))) as test_client:
        yield test_client


def _register(client: TestClient, name: str, blocks: int = 8) -> dict[str, object]:
    reg = registration(name, num_blocks=blocks, base=0x1000_0000 * (1 + len(name)))
    response = client.post("/v1/workers", json=reg.model_dump(mode="json"))
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_register_heartbeat_list_delete(client: TestClient) -> None:
    lease = _register(client, "prefill-0")
    assert lease["epoch"] == 1 and lease["ttl_s"] == 30
    assert client.post("/v1/workers/prefill-0/heartbeat").status_code == 200
    names = [w["registration"]["name"] for w in client.get("/v1/workers").json()]
    assert names == ["prefill-0"]
    assert client.delete("/v1/workers/prefill-0").status_code == 204
    gone = client.post("/v1/workers/prefill-0/heartbeat")
    assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM


def test_bad_registration_is_422_with_paths(client: TestClient) -> None:
    body = registration("w").model_dump(mode="json")
    body["layout"]["num_blocks"] = 0
    response = client.post("/v1/workers", json=body)
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert any("num_blocks" in e["path"] for e in response.json()["errors"])


def test_transfer_flow_over_http(client: TestClient) -> None:
    _register(client, "prefill-0")
    _register(client, "decode-0")
    created = client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                                 "src_blocks": [0, 1, 2], "plan_id": "r1"})
    assert created.status_code == 201 and created.json()["state"] == "pending"
    jobs = client.get("/v1/sidecars/decode-0/jobs", params={"wait_s": 0}).json()["jobs"]
    assert [j["kind"] for j in jobs] == ["execute"]
    assert jobs[0]["plan"]["schema_version"] == 1
    report = {"plan_id": "r1", "worker": "decode-0", "role": "initiator", "outcome": "ok",
              "bytes": 12288, "verified": True}
    done = client.post("/v1/transfers/r1/report", json=report)
    assert done.json()["state"] == "done"
    assert client.get("/v1/transfers/r1").json()["reports"][0]["bytes"] == 12288


def test_errors_map_to_problem_statuses(client: TestClient) -> None:
    _register(client, "prefill-0", blocks=2)
    _register(client, "decode-0", blocks=2)
    unknown = client.post("/v1/transfers", json={"src": "x", "dst": "decode-0",
                                                 "src_blocks": [0]})
    assert unknown.status_code == 404
    invalid = client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                                 "src_blocks": [0, 7]})
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["path"] == "src_blocks[1]"
    ok = {"src": "prefill-0", "dst": "decode-0", "src_blocks": [0], "plan_id": "same"}
    assert client.post("/v1/transfers", json=ok).status_code == 201
    assert client.post("/v1/transfers", json=ok).status_code == 409
    full = client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                              "src_blocks": [0, 1]})
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert full.headers["content-type"] == PROBLEM


def test_kv_events_reach_the_prefix_index(client: TestClient) -> None:
    _register(client, "decode-0")
    event = {"kind": "block_stored", "worker": "decode-0", "seq": 1, "block_hashes": [5, 6]}
    assert client.post("/v1/kv-events", json=event).json() == {"resync": None}
    index = client.app.state.prefix_index  # type: ignore[attr-defined]
    assert index.match([5, 6])["decode-0"].confirmed == 2
    bad = client.post("/v1/kv-events", json={"kind": "block_stored", "worker": "decode-0"})
    assert bad.status_code == 422


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOPOSCHED_TRANSFER_MODE", "WRITE")
    monkeypatch.setenv("TOPOSCHED_LEASE_TTL_S", "2.5")
    settings = Settings()
    assert settings.transfer_mode == "WRITE" and settings.lease_ttl_s == 2.5


def test_kv_events_can_come_in_a_batch(client: TestClient) -> None:
    _register(client, "decode-0")
    batch = [{"kind": "block_stored", "worker": "decode-0", "seq": 1, "block_hashes": [1, 2]},
             {"kind": "block_removed", "worker": "decode-0", "seq": 2, "block_hashes": [2]}]
    assert client.post("/v1/kv-events", json=batch).status_code == 200
    index = client.app.state.prefix_index  # type: ignore[attr-defined]
    assert index.match([1, 2])["decode-0"].confirmed == 1
    gap = [{"kind": "block_stored", "worker": "decode-0", "seq": 9, "block_hashes": [3]}]
    assert client.post("/v1/kv-events", json=gap).json()["resync"]["expected_seq"] == 3


def test_evicted_blocks_go_back_to_the_free_list(client: TestClient) -> None:
    _register(client, "prefill-0")
    _register(client, "decode-0", blocks=4)
    request = {"src": "prefill-0", "dst": "decode-0", "src_blocks": [0, 1, 2]}
    assert client.post("/v1/transfers", json=request).status_code == 201
    free = {w["registration"]["name"]: w["free_blocks"] for w in client.get("/v1/workers").json()}
    assert free["decode-0"] == 1
    assert client.post("/v1/workers/decode-0/free-blocks",
                       json={"blocks": [0, 2]}).status_code == 204
    free = {w["registration"]["name"]: w["free_blocks"] for w in client.get("/v1/workers").json()}
    assert free["decode-0"] == 3
    assert client.post("/v1/workers/ghost/free-blocks", json={"blocks": [0]}).status_code == 404


def test_transfer_long_poll_answers_on_change(client: TestClient) -> None:
    _register(client, "prefill-0")
    _register(client, "decode-0")
    client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                       "src_blocks": [0], "plan_id": "lp"})
    first = client.get("/v1/transfers/lp", params={"wait_s": 0})
    version = int(first.headers["x-record-version"])
    timed_out = client.get("/v1/transfers/lp", params={"wait_s": 0.05, "after": version})
    assert timed_out.json()["state"] == "pending"
    client.post("/v1/transfers/lp/report", json={"plan_id": "lp", "worker": "decode-0",
                                                 "role": "initiator", "outcome": "ok"})
    changed = client.get("/v1/transfers/lp", params={"wait_s": 5, "after": version})
    assert changed.json()["state"] == "done"
    assert int(changed.headers["x-record-version"]) > version


def test_a_report_can_ask_for_no_record_back(client: TestClient) -> None:
    _register(client, "prefill-0")
    _register(client, "decode-0")
    client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                       "src_blocks": [0], "plan_id": "min"})
    report = {"plan_id": "min", "worker": "decode-0", "role": "initiator", "outcome": "ok"}
    answer = client.post("/v1/transfers/min/report", json=report,
                         headers={"Prefer": "return=minimal"})
    assert answer.status_code == 204 and answer.content == b""
    assert answer.headers["preference-applied"] == "return=minimal"
    assert client.get("/v1/transfers/min").json()["state"] == "done"  # recorded all the same


def test_a_long_poll_can_wait_for_the_end_of_a_transfer(client: TestClient) -> None:
    _register(client, "prefill-0")
    _register(client, "decode-0")
    client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                       "src_blocks": [0], "plan_id": "end"})
    # a change that does not end it (the job leaves) does not answer an ended=true poll
    client.get("/v1/sidecars/decode-0/jobs", params={"wait_s": 0})
    pending = client.get("/v1/transfers/end", params={"wait_s": 0.2, "ended": True})
    assert pending.json()["state"] == "pending" and pending.json()["delivered_at"] is not None
    client.post("/v1/transfers/end/report", json={"plan_id": "end", "worker": "decode-0",
                                                  "role": "initiator", "outcome": "ok"})
    done = client.get("/v1/transfers/end", params={"wait_s": 5, "ended": True})
    assert done.json()["state"] == "done"


def test_the_report_stream_records_reports_and_applies_kv_events(client: TestClient) -> None:
    _register(client, "prefill-0")
    _register(client, "decode-0")
    client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                       "src_blocks": [0], "plan_id": "rs"})
    lines = [
        {"plan_id": "rs", "worker": "decode-0", "role": "initiator", "outcome": "ok"},
        [{"kind": "block_stored", "worker": "decode-0", "seq": 1, "block_hashes": [7, 8]}],
        {"plan_id": "rs", "worker": "prefill-0", "role": "target", "outcome": "ok"},
        [{"kind": "block_stored", "worker": "prefill-0", "seq": 1, "block_hashes": [9]}],
        {"plan_id": "nope", "worker": "decode-0", "role": "initiator", "outcome": "ok"},
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines) + "not json\n"
    answer = client.post("/v1/sidecars/decode-0/reports/stream", content=body)
    # this worker's report and events taken; another worker's, an unknown transfer and
    # a line that is not JSON refused, each on its own
    assert answer.json() == {"taken": 2, "refused": 4}
    assert client.get("/v1/transfers/rs").json()["state"] == "done"
    index = client.app.state.prefix_index  # type: ignore[attr-defined]
    assert index.match([7, 8])["decode-0"].confirmed == 2
    assert "prefill-0" not in index.match([9])


def _free(client: TestClient, name: str) -> int:
    workers = {w["registration"]["name"]: w for w in client.get("/v1/workers").json()}
    return int(workers[name]["free_blocks"])


def test_the_report_stream_takes_releases_of_its_own_worker_only(client: TestClient) -> None:
    _register(client, "prefill-0")
    _register(client, "decode-0")
    client.post("/v1/transfers", json={"src": "prefill-0", "dst": "decode-0",
                                       "src_blocks": [0, 1], "plan_id": "rl"})
    client.post("/v1/transfers/rl/report", json={"plan_id": "rl", "worker": "decode-0",
                                                 "role": "initiator", "outcome": "ok"})
    assert _free(client, "decode-0") == 6
    # the source may not release the destination's blocks: refused, nothing given back
    other = client.post("/v1/sidecars/prefill-0/reports/stream",
                        content=json.dumps({"release": "rl"}) + "\n")
    assert other.json() == {"taken": 0, "refused": 1}
    assert _free(client, "decode-0") == 6
    lines = [{"release": "rl", "worker": "decode-0"}, {"release": 7}, {"release": "nope"},
             {"release": "rl"}, {"release": "rl"}]
    answer = client.post("/v1/sidecars/decode-0/reports/stream",
                         content="".join(json.dumps(line) + "\n" for line in lines))
    # extra keys, a plan id that is not a string and an unknown transfer are refused; a
    # second release of the same transfer is taken and gives nothing back twice
    assert answer.json() == {"taken": 2, "refused": 3}
    assert _free(client, "decode-0") == 8
    assert client.get("/v1/transfers/rl").json()["dst_released"] is True
