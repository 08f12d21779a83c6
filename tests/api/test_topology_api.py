"""Topology feeds rebuild the fabric in place; reads, distances, auth and errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.collect_client import post_captures
from tests.api.service_builders import (
    OPERATOR,
    WORKER,
    bearer,
    cluster,
    fewer_gpus,
    load_cluster,
    make_app,
    target,
)
from topology.spec import FabricSpec
from topology.writers import lldp_json0, nvsmi_text


@pytest.fixture
def spec() -> FabricSpec:
    return cluster()


@pytest.fixture
def client(spec: FabricSpec) -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        load_cluster(test_client, spec)
        yield test_client


def _distance(client: TestClient, a: str, b: str, nbytes: int = 1 << 30) -> Any:
    answer = client.get("/v1/topology/distance", params={"a": a, "b": b, "bytes": nbytes},
                        headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_an_lldp_change_moves_a_nic_and_changes_the_distance(
        client: TestClient, spec: FabricSpec) -> None:
    h0, h1 = (h.name for h in spec.hosts[:2])
    assert _distance(client, f"{h0}/gpu0", f"{h1}/gpu0")["tier"] == "same_leaf"
    nics = spec.hosts[1].nics  # NIC 0 recabled to a free port of the rail-1 leaf
    recabled = nics[0].model_copy(update={"leaf": "z0-p0-rail1", "port": "Ethernet248"})
    moved = lldp_json0(spec.hosts[1].model_copy(update={"nics": (recabled, *nics[1:])}))
    answer = client.put(f"/v1/topology/hosts/{h1}/lldp", content=moved, headers=bearer())
    assert answer.status_code == 200, answer.text
    change = answer.json()["change"]
    assert change["changed"]
    assert change["nics_moved"] == [{"host": h1, "nic": "mlx5_0", "before": "z0-p0-rail0",
                                     "after": "z0-p0-rail1", "port": "Ethernet248"}]
    assert change["links_gone"] == [f"{h1}/mlx5_0->z0-p0-rail0"]
    (broken,) = change["rail_breaks"]  # the rail-0 NIC now sits on the rail-1 leaf
    assert (broken["host"], broken["nic"], broken["leaf"], broken["port"]) == (
        h1, "mlx5_0", "z0-p0-rail1", "Ethernet248")
    after = _distance(client, f"{h0}/gpu0", f"{h1}/gpu0")
    assert after["tier"] == "same_pod"
    assert after["transfer_time_s"] > 0


def test_reposting_the_same_capture_changes_nothing(client: TestClient,
                                                    spec: FabricSpec) -> None:
    host = spec.hosts[0]
    before = client.get("/v1/topology/fabric", headers=bearer()).json()
    for path, text in (("nvidia-smi", nvsmi_text(host)), ("lldp", lldp_json0(host))):
        answer = client.put(f"/v1/topology/hosts/{host.name}/{path}", content=text,
                            headers=bearer())
        assert answer.status_code == 200
        assert answer.json()["change"] == {"changed": False, "hosts_added": [],
                                           "hosts_removed": [], "gpus_added": [],
                                           "gpus_removed": [], "nics_moved": [],
                                           "links_gone": [], "rail_breaks": [],
                                           "rail_breaks_mended": []}
    assert client.get("/v1/topology/fabric", headers=bearer()).json() == before


def _wait_job(client: TestClient, job_id: str) -> Any:
    for _ in range(300):
        job = client.get(f"/v1/placement/jobs/{job_id}", headers=bearer()).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_a_host_losing_gpus_triggers_a_recorded_re_solve(client: TestClient,
                                                         spec: FabricSpec) -> None:
    started = client.post("/v1/placement/solve", json=target(), headers=bearer()).json()
    placed = _wait_job(client, started["job"]["id"])
    assert placed["status"] == "done", placed["error"]
    used = [g for i in placed["result"]["instances"] for g in i["gpus"]]
    victim = next(h for h in spec.hosts if f"{h.name}/gpu7" in used)
    answer = client.put(f"/v1/topology/hosts/{victim.name}/nvidia-smi",
                        content=nvsmi_text(fewer_gpus(victim)), headers=bearer())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert f"{victim.name}/gpu7" in body["change"]["gpus_removed"]
    job = _wait_job(client, body["replan_job"])
    assert job["kind"] == "re-solve" and f"{victim.name}/gpu7" in job["reason"]
    assert job["status"] == "done", job["error"]
    current = client.get("/v1/placement", headers=bearer()).json()
    assert current["origin"] == "re-solve"
    now_used = {g for i in current["placement"]["instances"] for g in i["gpus"]}
    assert not any(g.startswith(f"{victim.name}/gpu") and int(g[-1]) >= 4 for g in now_used)


def test_conflicting_inputs_are_409_with_the_list(client: TestClient, spec: FabricSpec) -> None:
    host = spec.hosts[0]
    nodes = {"kind": "NodeList", "items": [{"metadata": {
        "name": host.name, "labels": {"topology.kubernetes.io/zone": "elsewhere"}}}]}
    answer = client.put("/v1/topology/k8s-nodes", headers=bearer(), content=json.dumps(nodes))
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert any("elsewhere" in c for c in answer.json()["conflicts"])
    assert client.get("/v1/topology/fabric", headers=bearer()).status_code == 200


def test_reads_answer_json_svg_and_summary(client: TestClient) -> None:
    fabric = client.get("/v1/topology/fabric", headers=bearer(WORKER))
    assert fabric.status_code == 200 and len(fabric.json()["hosts"]) == 3
    svg = client.get("/v1/topology/fabric.svg", headers=bearer(WORKER))
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.lstrip().startswith("<svg") or "<svg" in svg.text[:200]
    summary = client.get("/v1/topology/summary", headers=bearer(WORKER)).json()
    assert summary["gpus"] == 24 and summary["rail_optimised"]


def test_unknown_gpu_in_distance_is_404(client: TestClient, spec: FabricSpec) -> None:
    answer = client.get("/v1/topology/distance", headers=bearer(WORKER),
                        params={"a": f"{spec.hosts[0].name}/gpu0", "b": "nowhere/gpu9"})
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


def test_a_worker_token_cannot_change_topology(client: TestClient, spec: FabricSpec) -> None:
    host = spec.hosts[0]
    answer = client.put(f"/v1/topology/hosts/{host.name}/nvidia-smi",
                        content=nvsmi_text(host), headers=bearer(WORKER))
    assert answer.status_code == 403
    assert client.get("/v1/topology/fabric").status_code == 401


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/topology/hosts/{host}/nvidia-smi", "GPU0 GPU1\nnot a matrix at all\n"),
    ("/v1/topology/hosts/{host}/lldp", "{not json"),
    ("/v1/topology/hosts/{host}/nccl", "<system><gpu"),
    ("/v1/topology/inventory", "version: 1\nzones: []\n"),
    ("/v1/topology/inventory", "\x00\x01binary"),
])
def test_bad_input_is_422_problem(client: TestClient, spec: FabricSpec, path: str,
                                  body: str) -> None:
    answer = client.put(path.format(host=spec.hosts[0].name), content=body, headers=bearer())
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"]


def test_inventory_capture_paths_are_refused_over_http(client: TestClient) -> None:
    text = ("version: 1\nzones:\n  - name: z\n    pods:\n      - name: p\n        racks:\n"
            "          - name: r\n            hosts:\n              - {name: h, nvsmi: x.txt}\n")
    answer = client.put("/v1/topology/inventory", content=text, headers=bearer())
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["path"].endswith("hosts[0].nvsmi")


def test_a_capture_for_a_host_outside_the_inventory_is_404(client: TestClient,
                                                           spec: FabricSpec) -> None:
    answer = client.put("/v1/topology/hosts/stranger/nvidia-smi",
                        content=nvsmi_text(spec.hosts[0]), headers=bearer())
    assert answer.status_code == 404


def test_readyz_needs_a_fabric() -> None:
    with TestClient(make_app()) as empty:
        answer = empty.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["reasons"] == ["no fabric loaded"]


def test_collect_client_posts_each_capture(client: TestClient, spec: FabricSpec) -> None:
    host = spec.hosts[0]
    transport = httpx.MockTransport(lambda request: _forward(client, request))
    results = {"nvidia-smi": {"ok": True, "output": nvsmi_text(host)},
               "lldp": {"ok": False, "output": "", "error": "lldpctl missing"}}
    answers = post_captures("http://scheduler", host.name, results, OPERATOR,
                            transport=transport)
    assert list(answers) == ["nvidia-smi"]
    assert answers["nvidia-smi"]["status"] == 200
    assert answers["nvidia-smi"]["body"]["change"]["changed"] is False


def _forward(client: TestClient, request: httpx.Request) -> httpx.Response:
    answer = client.request(request.method, request.url.path, content=request.content,
                            headers=dict(request.headers))
    return httpx.Response(answer.status_code, content=answer.content,
                          headers=answer.headers)
