"""InfiniBand subnets (issue 16): real ibnetdiscover captures parsed, leaves, spines and
pods derived, host HCAs matched by GUID or node description, rail breaks named — through
the library, the CLI and the service."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.cli.main import run
from tests.api.service_builders import WORKER, bearer, make_app
from tests.topology.builders import one_rack_inventory
from topology.build import Captures, build_fabric
from topology.distance import DistanceModel
from topology.errors import ParseError
from topology.ib_fabric import analyse
from topology.ibnetdiscover import parse_ibnetdiscover
from topology.inventory import load_inventory
from topology.tiers import Tier

FIXTURES = Path(__file__).parents[1] / "fixtures"
SUBNET = FIXTURES / "ibnetdiscover" / "topograph_dgx_h100.out"
NVSMI = FIXTURES / "nvsmi" / "dgx_h100_m.txt"
HOSTS = [f"a06-p1-dgx-02-c{i:02d}" for i in range(1, 6)]
C01 = HOSTS[0]


def _swapped_cables(text: str) -> str:
    """The capture with C01's HCA-1 and HCA-6 cables swapped (their identities traded
    everywhere, both sides of each cable, as the subnet manager would then see them)."""
    pairs = [("e09d7303008594bc", "e09d730300857d78"), (f"{C01} HCA-1", f"{C01} HCA-6")]
    for a, b in pairs:
        text = text.replace(a, "\0").replace(b, a).replace("\0", b)
    return text


@pytest.fixture(scope="module")
def subnet_text() -> str:
    return SUBNET.read_text()


def test_the_real_capture_parses_to_its_nodes_and_cables(subnet_text: str) -> None:
    fabric = parse_ibnetdiscover(subnet_text, str(SUBNET))
    kinds = Counter(node.kind for node in fabric.nodes)
    assert fabric.format == "plain" and kinds == {"switch": 40, "ca": 582}
    assert len(fabric.links) == 1114 and {link.gbit for link in fabric.links} == {400.0}
    leaf = fabric.by_guid()["0x2c5eab0300b87b40"]
    assert (leaf.description, leaf.ports, leaf.lid) == (
        "MF0;A09-P1-IBLEAF-04-04:MQM9701/U1", 65, 73)
    assert any((link.a == "0x2c5eab0300b87b40" and link.a_port == 65) or
               (link.b == "0x2c5eab0300b87b40" and link.b_port == 65) for link in fabric.links)


def test_leaves_spines_pods_and_measured_uplinks(subnet_text: str) -> None:
    topology = analyse([parse_ibnetdiscover(subnet_text, "x")])
    levels = Counter(topology.level.values())
    assert levels == {1: 31, 2: 9}  # aggregation nodes on the spines make no leaf of them
    assert set(topology.pod_of_leaf.values()) == {"ib-A09-P1-IBLEAF-01-01"}
    assert topology.leaf_uplink_gbit["A09-P1-IBLEAF-01-04"] == 18 * 400
    names = set(topology.switch_name.values())
    assert "A10-P1-IBSPINE-02" in names and "A09-P1-IBLEAF-04-04" in names


def test_ports_form_reads_both_directions_once_and_unconnected_ports() -> None:
    fabric = parse_ibnetdiscover((FIXTURES / "ibnetdiscover" / "osc_ports_test.out").read_text())
    assert fabric.format == "ports" and len(fabric.links) == 4
    hca = next(n for n in fabric.nodes if n.description == "o0001 HCA-1")
    assert (hca.kind, hca.guid, hca.lid) == ("ca", "0x7cfe9003003b4bde", 134)
    spaced = parse_ibnetdiscover((FIXTURES / "ibnetdiscover" / "osc_ports_test2.out").read_text())
    assert {n.description for n in spaced.nodes} >= {"5FB0405-leaf-IB01", "5FB0406-spine-IB03"}
    bare = parse_ibnetdiscover((FIXTURES / "ibnetdiscover" / "osc_ports_test3.out").read_text())
    assert bare.nodes[0].description == "Infiniscale-IV Mellanox Technologies"


@pytest.mark.parametrize(("text", "message", "line"), [
    ('Switch 36 "S-0002c9"\n[1] garbage\n', "cannot read this port line", 2),
    ('[1] "S-1"[1]\n', "port line before any Switch/Ca header", 1),
    ('vendid=0x2c9\nSwitch x "S-1"\n', "cannot read this node header", 2),
    ("SW  1719 10 0x7cfe9003009ce5b0 4x EDR - SW\n", "cannot read this port line", 1),
])
def test_errors_name_the_line(text: str, message: str, line: int) -> None:
    with pytest.raises(ParseError) as caught:
        parse_ibnetdiscover(text, "cap.out")
    assert message in str(caught.value) and f"cap.out:{line}" in str(caught.value)


def _build_args(tmp_path: Path, subnet: str) -> list[str]:
    (tmp_path / "subnet.out").write_text(subnet)
    args = ["topo", "build", "--ibnetdiscover", str(tmp_path / "subnet.out")]
    for host in HOSTS:
        args += ["--nvsmi", f"{host}={NVSMI}"]
    return args


def test_a_fabric_from_the_subnet_and_nvidia_smi_alone(
        subnet_text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fabric.json"
    assert run([*_build_args(tmp_path, subnet_text), "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rail_optimised"] and summary["hosts"] == len(HOSTS)
    assert any("HCA-<n>" in w for w in summary["warnings"])  # HCA-N descriptions inferred
    spec = json.loads(out.read_text())
    c01 = next(h for h in spec["hosts"] if h["name"] == C01)
    placed = {n["device"]: (n["leaf"], n["port"]) for n in c01["nics"] if n["leaf"]
              and not n["leaf"].startswith("uplink-unknown")}
    assert placed == {"mlx5_0": ("A09-P1-IBLEAF-01-02", "1"),
                      "mlx5_4": ("A09-P1-IBLEAF-03-02", "1"),
                      "mlx5_5": ("A09-P1-IBLEAF-04-02", "1")}
    rails = {leaf["name"]: leaf["rail"] for leaf in spec["leaves"]}
    assert (rails["A09-P1-IBLEAF-01-02"], rails["A09-P1-IBLEAF-04-02"]) == (0, 3)
    assert run(["topo", "distance", str(out), f"{C01}/gpu0", f"{HOSTS[1]}/gpu0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tier"] == "same_leaf"
    assert run(["topo", "distance", str(out), f"{C01}/gpu0", f"{HOSTS[1]}/gpu3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tier"] == "same_pod"


def test_swapped_cables_are_named_as_rail_breaks(
        subnet_text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*_build_args(tmp_path, _swapped_cables(subnet_text)), "-o",
                str(tmp_path / "f.json"), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    breaks = [w for w in warnings if w.startswith("rail break")]
    assert breaks == [
        f"rail break: host {C01} NIC mlx5_0 (rail 0) is cabled to A09-P1-IBLEAF-04-02 port 1, "
        "a rail-3 leaf",
        f"rail break: host {C01} NIC mlx5_5 (rail 3) is cabled to A09-P1-IBLEAF-01-02 port 1, "
        "a rail-0 leaf"]


def test_an_inventory_names_the_subnet_and_guids_match_without_descriptions(
        subnet_text: str, tmp_path: Path) -> None:
    anonymous = subnet_text.replace(f'"{C01} HCA-1"', '"MT4129 ConnectX7   Mellanox Technologies"')
    (tmp_path / "subnet.out").write_text(anonymous)
    (tmp_path / "c01.rdma").write_text("CA 'mlx5_0'\n\tNode GUID: 0xe09d7303008594bc\n")
    hosts = {h: {"nvsmi": NVSMI, **({"rdma": "c01.rdma"} if h == C01 else {})} for h in HOSTS}
    (tmp_path / "inventory.yaml").write_text(
        one_rack_inventory(hosts, zone="z", top="ibnetdiscover: [subnet.out]\n"))
    spec = build_fabric(load_inventory(tmp_path / "inventory.yaml"))
    assert spec.host(C01).nic("mlx5_0").leaf == "A09-P1-IBLEAF-01-02"
    leaf = next(f for f in spec.leaves if f.name == "A09-P1-IBLEAF-01-02")
    assert leaf.pod == "p" and leaf.uplink_gbit == 5600.0  # 14 of its 18 uplinks cabled
    model = DistanceModel(spec)
    assert model.tier(f"{C01}/gpu0", f"{HOSTS[1]}/gpu0") is Tier.SAME_LEAF


def test_two_hcas_claiming_one_nic_is_a_conflict(subnet_text: str) -> None:
    doubled = subnet_text.replace(f'"{HOSTS[1]} HCA-1"', f'"{C01} HCA-1"')
    captures = Captures(ib_parsed=[parse_ibnetdiscover(doubled, "x")],
                        nvsmi={h: NVSMI for h in HOSTS[:2]})
    spec = build_fabric(None, captures, keep_going=True)
    assert any(f"host {C01} NIC mlx5_0 matches two HCAs" in c for c in spec.conflicts)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


def test_the_service_builds_from_a_subnet_and_reports_recabling(
        client: TestClient, subnet_text: str) -> None:
    nvsmi = NVSMI.read_text()
    for host in HOSTS:
        answer = client.put(f"/v1/topology/hosts/{host}/nvidia-smi", content=nvsmi,
                            headers=bearer())
        assert answer.status_code == 200 and not answer.json()["fabric_loaded"]
    answer = client.put("/v1/topology/ibnetdiscover/fabric-a", content=subnet_text,
                        headers=bearer())
    assert answer.status_code == 200, answer.text
    assert answer.json()["fabric_loaded"] and answer.json()["change"]["rail_breaks"] == []
    distance = client.get("/v1/topology/distance", headers=bearer(WORKER),
                          params={"a": f"{C01}/gpu0", "b": f"{HOSTS[1]}/gpu0"})
    assert distance.json()["tier"] == "same_leaf"
    answer = client.put("/v1/topology/ibnetdiscover/fabric-a",
                        content=_swapped_cables(subnet_text), headers=bearer())
    assert answer.status_code == 200, answer.text
    change = answer.json()["change"]
    assert [(b["host"], b["nic"], b["leaf"], b["port"]) for b in change["rail_breaks"]] == [
        (C01, "mlx5_0", "A09-P1-IBLEAF-04-02", "1"), (C01, "mlx5_5", "A09-P1-IBLEAF-01-02", "1")]
    moved = {(m["nic"], m["after"]) for m in change["nics_moved"]}
    assert moved == {("mlx5_0", "A09-P1-IBLEAF-04-02"), ("mlx5_5", "A09-P1-IBLEAF-01-02")}
    mended = client.put("/v1/topology/ibnetdiscover/fabric-a", content=subnet_text,
                        headers=bearer()).json()["change"]
    assert len(mended["rail_breaks_mended"]) == 2 and mended["rail_breaks"] == []


def test_a_broken_subnet_capture_is_422_naming_the_line(client: TestClient) -> None:
    answer = client.put("/v1/topology/ibnetdiscover/x", content='Switch 36 "S-1"\n[1] junk\n',
                        headers=bearer())
    assert answer.status_code == 422
    assert ":2: cannot read this port line" in answer.json()["detail"]
