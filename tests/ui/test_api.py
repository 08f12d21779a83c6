"""The page's files and reads through the service's app: tokens, zooms, decisions,
traffic (the same series as /metrics), the placement and what a re-solve moved."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from api.ui.router import FILES
from scheduler.telemetry import TransferSample
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    fewer_gpus,
    load_cluster,
    make_app,
    register_pair,
    target,
)
from topology.spec import FabricSpec
from topology.synth import SynthParams, synth_cluster
from topology.writers import nvsmi_text

READS = ("/v1/ui/overview", "/v1/ui/pods/p", "/v1/ui/hosts/h", "/v1/ui/decisions",
         "/v1/ui/placement", "/v1/ui/traffic", "/v1/ui/events")


@pytest.fixture(scope="module")
def spec() -> FabricSpec:
    return cluster(hosts=3)


@pytest.fixture
def client(spec: FabricSpec) -> Iterator[TestClient]:
    with TestClient(make_app(settings=Settings(lease_ttl_s=600))) as test_client:
        load_cluster(test_client, spec)
        register_pair(test_client, spec)
        yield test_client


def _get(client: TestClient, path: str) -> Any:
    answer = client.get(path, headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    return answer.json()


def _route(client: TestClient, hashes: list[int], request_id: str) -> dict[str, Any]:
    """Route a prompt whose blocks prefill-0 holds (so its KV moves to decode-0)."""
    stored = client.post("/v1/kv-events", headers=bearer(WORKER), json={
        "kind": "block_stored", "worker": "prefill-0", "seq": hashes[0],
        "block_hashes": hashes, "parent_hash": None, "model": "llama-3-70b"})
    assert stored.status_code == 200, stored.text
    answer = client.post("/v1/route", headers=bearer(WORKER), json={
        "block_hashes": hashes, "model": "llama-3-70b", "request_id": request_id})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert body["plan_id"], f"the prompt's KV should move: {body['decision']['notes']}"
    return body


def test_the_page_loads_without_a_token_under_a_same_origin_policy(
        client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), "inline script"
    assert " style=" not in page.text, "inline style (the policy forbids it)"
    for name, media in FILES.items():
        answer = client.get(f"/ui/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"] == media
        assert not re.search(r"(src|href|import)[^\n]*https?://", answer.text), \
            f"{name} loads something from another origin"
        again = client.get(f"/ui/{name}", headers={"If-None-Match": answer.headers["etag"]})
        assert again.status_code == 304
    missing = client.get("/ui/settings.py")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", READS)
def test_every_read_takes_the_api_token(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 401
    assert client.get(path, headers=bearer("wrong")).status_code == 401


def test_the_cluster_zoom_is_one_tile_per_host_with_roles(client: TestClient,
                                                          spec: FabricSpec) -> None:
    overview = _get(client, "/v1/ui/overview")
    assert overview["summary"]["gpus"] == 24 and overview["workers"] == 2
    tiles = {t["name"]: t for z in overview["zones"] for p in z["pods"] for r in p["racks"]
             for t in r["hosts"]}
    assert set(tiles) == {h.name for h in spec.hosts}
    first, second = spec.hosts[0].name, spec.hosts[1].name
    assert tiles[first]["prefill"] == 2 and tiles[first]["live"] == 2
    assert tiles[second]["decode"] == 2 and tiles[spec.hosts[2].name]["live"] == 0
    assert all(isinstance(t["gpus"], int) for t in tiles.values())  # no GPU below a host
    pod = overview["zones"][0]["pods"][0]
    assert [leaf["rail"] for leaf in pod["leaves"]] == list(range(8))
    assert {t["kind"] for t in overview["tiers"]} >= {"nvlink", "nic_leaf", "zone_link"}


def test_zooming_in_reads_a_pod_and_a_host(client: TestClient, spec: FabricSpec) -> None:
    pod_name = spec.pods[0].name
    pod = _get(client, f"/v1/ui/pods/{pod_name}")
    assert len(pod["hosts"]) == 3 and all(len(h["gpus"]) == 8 for h in pod["hosts"])
    cells = {g["name"]: g for h in pod["hosts"] for g in h["gpus"]}
    assert cells[f"{spec.hosts[0].name}/gpu1"]["worker"] == "prefill-0"
    assert {i["id"] for i in pod["instances"]} == {"prefill-0", "decode-0"}
    host = _get(client, f"/v1/ui/hosts/{spec.hosts[1].name}")
    assert host["gpus"][0]["role"] == "decode" and host["gpus"][2]["role"] is None
    assert len(host["gpu_links"]) == 8 and host["gpu_links"][0][1].startswith("NV")
    assert [nic["rail"] for nic in host["nics"]] == list(range(8))
    for missing in ("/v1/ui/pods/nowhere", "/v1/ui/hosts/nowhere"):
        answer = client.get(missing, headers=bearer(WORKER))
        assert answer.status_code == 404 and "nowhere" in answer.json()["detail"]


def test_a_route_shows_in_the_decisions_with_its_reasons(client: TestClient) -> None:
    before = _get(client, "/v1/ui/decisions")["items"]
    routed = _route(client, [11, 12, 13], "req-ui-1")["decision"]
    items = _get(client, "/v1/ui/decisions")["items"]
    assert len(items) == len(before) + 1
    decision = items[-1]
    assert decision["request_id"] == "req-ui-1" and decision["status"] == "scheduled"
    assert decision["prefill"] == routed["prefill"] and decision["decode"] == routed["decode"]
    assert decision["estimate"]["total_s"] == routed["estimate"]["total_s"] > 0
    assert decision["notes"] == routed["notes"] and decision["score"] == routed["score"]
    later = _get(client, f"/v1/ui/decisions?after={decision['seq']}")
    assert later["items"] == []


def _metrics_count(client: TestClient, tier: str) -> float:
    pattern = re.compile(r'^toposched_transfer_latency_seconds_count\{tier="' + tier +
                         r'",[^}]*\} (\S+)$', re.M)
    return sum(float(v) for v in pattern.findall(client.get("/metrics").text))


def test_a_finished_transfer_moves_the_tier_histogram_as_in_metrics(
        client: TestClient) -> None:
    body = _route(client, [21, 22, 23, 24], "req-ui-2")
    tier = body["decision"]["transfer"]["tier"]
    moving = _get(client, "/v1/ui/traffic")["links"]["items"]
    assert {item["link"] for item in moving} == set(body["decision"]["transfer"]["links"])
    assert all(item["bytes"] == body["decision"]["transfer"]["bytes"] for item in moving)
    report = {"plan_id": body["plan_id"], "worker": "decode-0", "role": "initiator",
              "outcome": "ok", "bytes": 4096, "duration_s": 0.003, "tier": tier}
    for side in (report, {**report, "worker": "prefill-0", "role": "target"}):
        answer = client.post(f"/v1/transfers/{body['plan_id']}/report", json=side,
                             headers=bearer(WORKER))
        assert answer.status_code == 200, answer.text
    traffic = _get(client, "/v1/ui/traffic")  # both sides reported: one transfer
    series = [s for s in traffic["latency"]["series"] if s["tier"] == tier]
    assert sum(s["count"] for s in series) == 1 == _metrics_count(client, tier)
    bounds = traffic["latency"]["bounds"]
    assert series[0]["counts"][next(i for i, b in enumerate(bounds) if b >= 0.003)] == 1
    assert traffic["links"]["items"] == []  # the transfer left its links
    assert {"tier": tier, "outcome": "ok", "count": 1} in traffic["transfers"]


def test_drift_alerts_reach_the_traffic_read(client: TestClient) -> None:
    telemetry = client.app.state.runtime.telemetry  # type: ignore[attr-defined]
    for i in range(700):  # a calm baseline, then a tail three times slower
        seconds = 0.01 if i < 500 else 0.03
        telemetry.record_transfer(TransferSample(tier="same_pod", src_domain="a",
                                                 dst_domain="b", nbytes=1, seconds=seconds))
    alerts = _get(client, "/v1/ui/traffic")["alerts"]
    assert alerts and alerts[0]["state"] == "firing" and alerts[0]["tier"] == "same_pod"


def _placement(client: TestClient, origin: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = _get(client, "/v1/ui/placement")
        if shown is not None and shown["origin"] == origin:
            return dict(shown)
        time.sleep(0.05)
    raise AssertionError(f"no {origin} placement shown in 60 s")


@pytest.mark.slow
def test_the_placement_and_what_a_re_solve_moved(client: TestClient,
                                                 spec: FabricSpec) -> None:
    started = client.post("/v1/placement/solve", json=target(), headers=bearer())
    assert started.status_code == 202, started.text
    first = _placement(client, "solve")
    assert first["prefill"] == 2 and first["decode"] == 2
    assert first["change"]["compared"] is False and first["change"]["placed_count"] == 4
    placed = client.get("/v1/placement", headers=bearer()).json()["placement"]["instances"]
    victim = next(h for h in spec.hosts if any(f"{h.name}/gpu7" in i["gpus"] for i in placed))
    answer = client.put(f"/v1/topology/hosts/{victim.name}/nvidia-smi",
                        content=nvsmi_text(fewer_gpus(victim)), headers=bearer())
    assert answer.status_code == 200 and answer.json()["replan_job"], answer.text
    second = _placement(client, "re-solve")
    change = second["change"]
    assert change["compared"] is True and change["removed_count"] >= 1
    assert any(f"{victim.name}/gpu7" in i["gpus"] for i in change["removed"])
    assert change["kept"] + change["removed_count"] == 4
    assert second["job"]["kind"] == "re-solve" and f"{victim.name}/gpu7" in second["job"]["reason"]
    pod = _get(client, f"/v1/ui/pods/{spec.pods[0].name}")
    assert sum(i["placed"] for i in pod["instances"]) == 4
    assert len(pod["pairings"]) == len(client.get("/v1/placement", headers=bearer())
                                       .json()["placement"]["pairings"])


def test_nvlink_domains_spanning_hosts_show_at_every_zoom(tmp_path: Path) -> None:
    spec = synth_cluster(SynthParams(zones=1, pods_per_zone=1, racks_per_pod=2,
                                     hosts_per_rack=2, nvlink_domain_per_rack=True))
    spec.save(tmp_path / "fabric.json")
    settings = Settings(fabric=tmp_path / "fabric.json")
    with TestClient(make_app(settings=settings)) as client:
        overview = _get(client, "/v1/ui/overview")
        domains = {d["name"]: d["hosts"] for d in overview["nvlink_domains"]}
        assert len(domains) == 2 and all(len(hosts) == 2 for hosts in domains.values())
        tiles = [t for z in overview["zones"] for p in z["pods"] for r in p["racks"]
                 for t in r["hosts"]]
        assert all(t["domain"] in domains and t["name"] in domains[t["domain"]] for t in tiles)
        host = _get(client, f"/v1/ui/hosts/{spec.hosts[0].name}")
        assert host["domain"]["hosts"] == list(domains[tiles[0]["domain"]])
        pod = _get(client, f"/v1/ui/pods/{spec.pods[0].name}")
        assert {h["domain"] for h in pod["hosts"]} == set(domains)
