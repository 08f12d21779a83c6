"""The service's telemetry wiring: routing, prefix and link gauges in /metrics, a fabric
from feeds reaching transfer hints and telemetry, calibration reaching the router."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from scheduler.telemetry import TransferSample
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    register_pair,
)
from topology.spec import FabricSpec


@pytest.fixture
def spec() -> FabricSpec:
    return cluster(hosts=2)


@pytest.fixture
def client(spec: FabricSpec) -> Iterator[TestClient]:
    app = make_app(settings=Settings(calibrate_interval_s=0.05))
    with TestClient(app) as test_client:
        load_cluster(test_client, spec)  # the fabric arrives as feeds, not --fabric
        register_pair(test_client, spec)
        yield test_client


def _metric(client: TestClient, line_start: str) -> float:
    text = client.get("/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(line_start)]
    return sum(values)


def _route(client: TestClient, hashes: list[int]) -> dict[str, object]:
    answer = client.post("/v1/route", json={"block_hashes": hashes, "model": "llama-3-70b"},
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_routes_show_in_routing_prefix_and_link_metrics(client: TestClient) -> None:
    body = _route(client, [1, 2, 3])
    assert _metric(client, "toposched_routing_decision_seconds_count") == 1
    assert _metric(client, "toposched_prefix_cache_lookup_blocks_total") == 3
    decision = body["decision"]
    assert isinstance(decision, dict) and decision["transfer"]["links"]
    in_flight = _metric(client, "toposched_link_inflight_bytes")
    assert in_flight == decision["transfer"]["bytes"] * len(decision["transfer"]["links"])
    plan_id = body["plan_id"]
    report = {"plan_id": plan_id, "worker": "decode-0", "role": "initiator",
              "outcome": "ok", "bytes": 1, "duration_s": 0.01,
              "tier": decision["transfer"]["tier"]}
    answer = client.post(f"/v1/transfers/{plan_id}/report", json=report,
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    assert _metric(client, "toposched_link_inflight_bytes") == 0


def test_a_transfer_both_sides_report_is_counted_once(client: TestClient) -> None:
    body = _route(client, [31, 32])
    decision = body["decision"]
    assert isinstance(decision, dict)
    tier = decision["transfer"]["tier"]
    initiator = {"plan_id": body["plan_id"], "worker": "decode-0", "role": "initiator",
                 "outcome": "ok", "bytes": 1, "duration_s": 0.01, "tier": tier}
    target = {**initiator, "worker": "prefill-0", "role": "target"}
    for report in (initiator, target):
        answer = client.post(f"/v1/transfers/{body['plan_id']}/report", json=report,
                             headers=bearer(WORKER))
        assert answer.status_code == 200, answer.text
    assert _metric(client, f'toposched_transfers_total{{tier="{tier}",outcome="ok"}}') == 1
    assert _metric(client, "toposched_transfer_latency_seconds_count") == 1


def test_a_fabric_from_feeds_reaches_transfer_hints_and_telemetry(client: TestClient) -> None:
    body = _route(client, [5, 6])
    record = client.get(f"/v1/transfers/{body['plan_id']}", headers=bearer(WORKER)).json()
    hints = record["plan"]["hints"]
    assert hints["src_net_device"] and hints["dst_net_device"]  # NICs from the fabric
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.distance is client.app.state.services.fabric.distance  # type: ignore[attr-defined]
    assert runtime.worker_domains["decode-0"] != "unknown"


def test_calibration_reaches_the_routers_cost_model(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    decision = _route(client, [7, 8])["decision"]
    assert isinstance(decision, dict)
    tier = decision["transfer"]["tier"]
    table = services.fabric.router.pair_table
    mask = table.tier == _tier_code(tier)
    before = table.bandwidth[mask].copy()
    for i in range(64):  # transfers 4x slower than the fabric's figures
        nbytes = (1 + i % 8) << 24
        seconds = 4 * nbytes / (before.max() * 1e9) + 1e-4
        runtime.telemetry.record_transfer(TransferSample(
            tier=tier, src_domain="a", dst_domain="b", nbytes=nbytes, seconds=seconds))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (table.bandwidth[mask] == before).all():
        time.sleep(0.05)
    assert (table.bandwidth[mask] < before).all()


def _tier_code(label: str) -> int:
    from topology.tiers import Tier
    return int(Tier.from_label(label))
