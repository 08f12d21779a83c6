"""Hosts that no input places on a switch: built with an explicit unknown-uplink leaf
each, priced through the pod aggregation, and usable by every query (issue 11 item 8)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.cli.main import run
from tests.api.service_builders import MOONCAKE_BLOCKS, WORKER, bearer, make_app, worker_json
from topology.build import build_fabric
from topology.distance import DistanceModel
from topology.inventory import load_inventory
from topology.spec import UNKNOWN_UPLINK_PREFIX, FabricSpec, load_fabric
from topology.tiers import Tier

FIXTURES = Path(__file__).parents[1] / "fixtures"
NVSMI = (FIXTURES / "nvsmi" / "dgx_h100_m.txt").read_text()
INVENTORY = """version: 1
zones:
  - name: z
    pods:
      - name: p
        racks:
          - name: r1
            hosts: [{name: h1, nvsmi: h1.txt}, {name: h2, nvsmi: h2.txt}]
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    for host in ("h1", "h2"):
        (tmp_path / f"{host}.txt").write_text(NVSMI)
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return path


def test_build_then_distance_through_the_cli(inventory: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    fabric = tmp_path / "fabric.json"
    assert run(["topo", "build", "--inventory", str(inventory), "-o", str(fabric),
                "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert any("no switch information" in w and "h1" in w for w in summary["warnings"])
    assert run(["topo", "distance", str(fabric), "h1/gpu0", "h2/gpu3", "--json",
                "--bytes", "1G"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["tier"] == "same_pod"
    assert f"leaf:{UNKNOWN_UPLINK_PREFIX}h1:up" in answer["path_links"]
    assert answer["transfer_time_ms"] > 0


def test_each_host_gets_its_own_leaf_with_its_line_rate(inventory: Path) -> None:
    spec = build_fabric(load_inventory(inventory))
    leaves = {leaf.name: leaf for leaf in spec.leaves}
    for host in spec.hosts:
        leaf = leaves[f"{UNKNOWN_UPLINK_PREFIX}{host.name}"]
        assert host.uplink_leaf == leaf.name and leaf.rail is None
        assert leaf.uplink_gbit == sum(nic.gbit for nic in host.nics)
    model = DistanceModel(spec)
    assert model.tier("h1/gpu0", "h2/gpu0") is Tier.SAME_POD
    assert model.tier("h1/gpu0", "h1/gpu1") is Tier.NVLINK


def test_a_fabric_document_without_leaves_still_answers(inventory: Path) -> None:
    """Documents written before the builder added these leaves: no IndexError."""
    built = build_fabric(load_inventory(inventory))
    hosts = tuple(h.model_copy(update={"uplink_leaf": None}) for h in built.hosts)
    legacy = FabricSpec(name=built.name, links=built.links, zones=built.zones,
                        pods=built.pods, leaves=(), racks=built.racks, hosts=hosts)
    model = DistanceModel(legacy)
    links = model.path_links("h1/gpu0", "h2/gpu0")
    assert model.tier("h1/gpu0", "h2/gpu0") is Tier.SAME_POD
    assert all(model.link_capacity_gb_per_s(link) > 0 for link in links)


def test_a_loaded_fabric_round_trips(inventory: Path, tmp_path: Path) -> None:
    spec = build_fabric(load_inventory(inventory))
    spec.save(tmp_path / "f.json")
    assert load_fabric(tmp_path / "f.json") == spec


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as test_client:
        yield test_client


def test_the_service_builds_routes_and_prices_it(client: TestClient) -> None:
    for host in ("h1", "h2"):
        answer = client.put(f"/v1/topology/hosts/{host}/nvidia-smi", content=NVSMI,
                            headers=bearer())
        assert answer.status_code == 200, answer.text
    body = INVENTORY.replace(", nvsmi: h1.txt", "").replace(", nvsmi: h2.txt", "")
    answer = client.put("/v1/topology/inventory", content=body,
                        headers={**bearer(), "Content-Type": "application/yaml"})
    assert answer.status_code == 200, answer.text
    summary = client.get("/v1/topology/summary", headers=bearer(WORKER)).json()
    assert any("no switch information" in w for w in summary["warnings"])
    distance = client.get("/v1/topology/distance", params={"a": "h1/gpu0", "b": "h2/gpu0"},
                          headers=bearer(WORKER))
    assert distance.status_code == 200, distance.text
    assert distance.json()["tier"] == "same_pod"
    for name, role, host in (("p0", "prefill", "h1"), ("d0", "decode", "h2")):
        answer = client.post("/v1/workers", json=worker_json(name, role, [f"{host}/gpu0"]),
                             headers=bearer(WORKER))
        assert answer.status_code == 201, answer.text
    # a long prompt: prefilling it on the prefill worker and moving it wins
    route = client.post("/v1/route", json={"block_hashes": list(range(1, 33)),
                                           "model": "llama-3-70b"}, headers=bearer(WORKER))
    assert route.status_code == 200, route.text
    decision = route.json()["decision"]
    assert decision["mode"] == "disaggregated", decision
    assert decision["transfer"]["tier"] == "same_pod"
    assert f"leaf:{UNKNOWN_UPLINK_PREFIX}h1:up" in decision["transfer"]["links"]
