"""The service's telemetry wiring: routing, prefix and link gauges in /metrics, a fabric
from feeds reaching transfer hints and telemetry, calibration reaching the router."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import numpy as np
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
    worker_json,
)
from topology.spec import FabricSpec


@pytest.fixture
def spec() -> FabricSpec:
    return cluster(hosts=2)


@pytest.fixture
def client(spec: FabricSpec) -> Iterator[TestClient]:
    app = make_app(settings=Settings(calibrate_interval_s=0.05, block_tokens=512))
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
    everyone = np.arange(len(table.gpu), dtype=np.int64)

    def bandwidth() -> np.ndarray:
        return table.figures(everyone, everyone)[2][mask]

    mask = table.figures(everyone, everyone)[0] == _tier_code(tier)
    before = bandwidth()
    for i in range(64):  # transfers 4x slower than the fabric's figures
        nbytes = (1 + i % 8) << 24
        seconds = 4 * nbytes / (before.max() * 1e9) + 1e-4
        runtime.telemetry.record_transfer(TransferSample(
            tier=tier, src_domain="a", dst_domain="b", nbytes=nbytes, seconds=seconds))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (bandwidth() == before).all():
        time.sleep(0.05)
    assert (bandwidth() < before).all()


def _tier_code(label: str) -> int:
    from topology.tiers import Tier
    return int(Tier.from_label(label))


def _report(client: TestClient, plan_id: object, worker: str, role: str,
            seconds: float = 0.01, nbytes: int = 1 << 20) -> None:
    report = {"plan_id": plan_id, "worker": worker, "role": role, "outcome": "ok",
              "bytes": nbytes, "duration_s": seconds}
    answer = client.post(f"/v1/transfers/{plan_id}/report", json=report,
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text


def test_each_transfer_is_counted_once_though_both_sides_report(client: TestClient) -> None:
    body = _route(client, [11, 12])
    decision = body["decision"]
    assert isinstance(decision, dict)
    _report(client, body["plan_id"], "decode-0", "initiator")  # READ: decode pulls, done
    _report(client, body["plan_id"], "prefill-0", "target")
    tier = decision["transfer"]["tier"]
    assert _metric(client, f'toposched_transfers_total{{tier="{tier}",outcome="ok"}}') == 1
    assert _metric(client, f'toposched_transfer_latency_seconds_count{{tier="{tier}"') == 1
    assert _metric(client, f'toposched_transfer_bytes_total{{tier="{tier}"}}') == 1 << 20


def test_a_tenfold_slowdown_over_hundreds_of_transfers_raises_a_drift_alert(
        spec: FabricSpec) -> None:
    """Samples from the service's own records, aged by wall time: 550 transfers at
    ~1 ms, then 100 at ~10 ms on the same tier. (Records stamped with a monotonic clock
    looked hours old to the detector, and it dropped every sample.)"""
    jitter = random.Random(3)
    with TestClient(make_app()) as client:
        load_cluster(client, spec)
        h0, h1 = (h.name for h in spec.hosts)
        for name, role, gpu in (("prefill-0", "prefill", f"{h0}/gpu0"),
                                ("decode-0", "decode", f"{h1}/gpu0")):
            answer = client.post("/v1/workers", headers=bearer(WORKER),
                                 json=worker_json(name, role, [gpu], num_blocks=1024))
            assert answer.status_code == 201, answer.text
        for i in range(650):
            if i % 100 == 0:  # no sidecars here: keep their leases (10 s) alive
                for name in ("prefill-0", "decode-0"):
                    client.post(f"/v1/workers/{name}/heartbeat", headers=bearer(WORKER))
            submitted = client.post("/v1/transfers", headers=bearer(WORKER), json={
                "src": "prefill-0", "dst": "decode-0", "src_blocks": [i % 1024]})
            assert submitted.status_code == 201, submitted.text
            plan = submitted.json()["plan"]
            seconds = (1e-3 if i < 550 else 1e-2) * jitter.uniform(0.8, 1.2)
            _report(client, plan["plan_id"], "decode-0", "initiator", seconds)
        alerts = client.get("/v1/alerts", headers=bearer(WORKER)).json()
        assert [(a["tier"], a["state"]) for a in alerts] == [(plan["hints"]["tier"], "firing")]
        assert alerts[0]["factor"] > 5
        assert _metric(client, "toposched_alerts_firing") == 1
