"""``topo parse --json`` for the formats of issue 16: detected without --format, and the
fields docs/topology-inputs.md promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli.main import run

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _parse(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, object]:
    assert run(["topo", "parse", str(path), "--json", "--host", "h1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize(("name", "variant"), [("topograph_dgx_h100.out", "plain"),
                                               ("osc_ports_test.out", "ports")])
def test_ibnetdiscover_contract(name: str, variant: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    result = _parse(capsys, FIXTURES / "ibnetdiscover" / name)
    assert (result["format"], result["variant"], result["host"]) == ("ibnetdiscover", variant,
                                                                     "h1")
    node = result["nodes"][0]  # type: ignore[index]
    link = result["links"][0]  # type: ignore[index]
    assert set(node) == {"kind", "guid", "description", "ports", "lid"}
    assert set(link) == {"a", "a_port", "b", "b_port", "width", "speed", "gbit"}
    assert link["a"] < link["b"] or (link["a"] == link["b"] and link["a_port"] < link["b_port"])


@pytest.mark.parametrize(("name", "variant"), [("madsys_qdr_dual_port.txt", "classic"),
                                               ("switchib_line.txt", "line")])
def test_iblinkinfo_contract(name: str, variant: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    result = _parse(capsys, FIXTURES / "iblinkinfo" / name)
    assert (result["format"], result["variant"], result["host"]) == ("iblinkinfo", variant, "h1")
    node = result["nodes"][0]  # type: ignore[index]
    link = result["links"][0]  # type: ignore[index]
    down = result["down_ports"][0]  # type: ignore[index]
    assert set(node) == {"kind", "guid", "description", "ports", "lid"}
    assert set(link) == {"a", "a_port", "b", "b_port", "width", "speed", "gbit"}
    assert set(down) == {"node", "port", "state", "phys_state"}
    assert (link["width"], down["state"], down["phys_state"]) == ("4x", "Down", "Polling")


def test_rdma_devices_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rdma.txt"
    path.write_text("mlx5_0 port 1 ==> ens1np0 (Up)\nlink mlx5_1/1 state ACTIVE netdev ib0\n")
    result = _parse(capsys, path)
    assert (result["format"], result["variant"], result["tools"]) == (
        "rdma-devices", "text", ["ibdev2netdev", "rdma-link"])
    device = result["devices"][0]  # type: ignore[index]
    assert set(device) == {"device", "node_guid", "node_desc", "pci", "netdevs", "ports"}
    assert set(device["ports"][0]) == {"port", "netdev", "state", "link_layer", "rate_gbit",
                                       "guid"}


def test_aws_topology_contract(capsys: pytest.CaptureFixture[str]) -> None:
    result = _parse(capsys, FIXTURES / "aws" / "awscli_example.json")
    assert result["format"] == "aws-topology"
    instance = result["instances"][0]  # type: ignore[index]
    assert instance == {"instance_id": "i-1111111111example", "instance_type": "p4d.24xlarge",
                        "group_name": "my-ml-cpg", "network_nodes": [
                            "nn-1111111111example", "nn-2222222222example",
                            "nn-3333333333example"],
                        "availability_zone": "us-west-2a", "zone_id": "usw2-az2",
                        "capacity_block_id": None}


def test_the_text_summary_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["topo", "parse", str(FIXTURES / "ibnetdiscover" / "topograph_dgx_h100.out")]) == 0
    assert capsys.readouterr().out.strip() == "ibnetdiscover: 622 nodes, 1114 links"
