"""Building fabrics from inventories and captures: round trips, conflicts, rails, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from api.cli.main import run
from tests.topology.builders import EXPECTED, SOURCE, TIER_PEERS, small_fabric
from topology.build import Captures, build_fabric
from topology.distance import DistanceModel
from topology.errors import ConflictError, NotFoundError, ValidationError
from topology.inventory import load_inventory
from topology.spec import load_fabric
from topology.writers import write_captures

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic 3-level cluster written as inventory + per-host captures."""
    out = tmp_path_factory.mktemp("cluster")
    spec = small_fabric()
    spec.save(out / "orig.json")
    return out / "orig.json", write_captures(spec, out / "captures")


def test_build_from_captures_reproduces_every_pair(captured: tuple[Path, Path]) -> None:
    original = DistanceModel(load_fabric(captured[0]))
    rebuilt = DistanceModel(build_fabric(load_inventory(captured[1])))
    assert rebuilt.names == original.names
    everyone = np.arange(len(original.names))
    for a in range(0, len(original.names), 5):
        for got, want in zip(rebuilt.costs_from(a, everyone), original.costs_from(a, everyone),
                             strict=True):
            np.testing.assert_allclose(got, want)


def test_rails_are_discovered_from_lldp_not_assumed(captured: tuple[Path, Path]) -> None:
    spec = build_fabric(load_inventory(captured[1]))
    rails = {leaf.name: leaf.rail for leaf in spec.leaves}
    assert rails["z0-p0-rail3"] == 3
    assert all(rail is not None for rail in rails.values())
    host = spec.host("z0-p0-r0-h00")
    assert [nic.leaf for nic in host.nics][:2] == ["z0-p0-rail0", "z0-p0-rail1"]


@pytest.mark.parametrize("tier", list(EXPECTED))
def test_cli_distance_matches_hand_computed_tiers(captured: tuple[Path, Path], tier: str,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fabric = tmp_path / "fabric.json"
    assert run(["topo", "build", "--inventory", str(captured[1]), "-o", str(fabric)]) == 0
    capsys.readouterr()
    assert run(["topo", "distance", str(fabric), SOURCE, TIER_PEERS[tier], "--bytes", "1G",
                "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    latency, bandwidth, hops = EXPECTED[tier]
    assert (result["tier"], result["hops"]) == (tier, hops)
    assert result["latency_us"] == pytest.approx(latency)
    assert result["bandwidth_gb_per_s"] == pytest.approx(bandwidth)
    assert result["transfer_time_ms"] == pytest.approx((latency * 1e-6 + 2**30 / (bandwidth * 1e9))
                                                       * 1e3, rel=1e-6)


def _inventory(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(body)
    return path


def test_lldp_disagreeing_with_the_inventory_is_a_conflict(captured: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    host_dir = captured[1].parent / "captures"
    inventory = _inventory(tmp_path, f"""
version: 1
zones:
  - name: z0
    pods:
      - name: p0
        racks:
          - name: r0
            leaf: some-other-tor
            hosts:
              - name: z0-p0-r0-h00
                template: hgx-h100
                lldp: {host_dir}/z0-p0-r0-h00.lldp.json
                netdevs: {{mlx5_0: ens1np0, mlx5_1: ens2np0}}
""")
    with pytest.raises(ConflictError, match="NIC mlx5_0 is on z0-p0-rail0 per LLDP"):
        build_fabric(load_inventory(inventory))
    spec = build_fabric(load_inventory(inventory), keep_going=True)
    assert spec.host("z0-p0-r0-h00").nic("mlx5_0").leaf == "z0-p0-rail0"
    assert len(spec.conflicts) == 2


def test_host_listed_twice_is_a_conflict(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, """
version: 1
defaults: {template: hgx-h100}
zones:
  - name: z0
    pods:
      - name: p0
        racks:
          - {name: r0, leaf: t0, hosts: [h1]}
          - {name: r1, leaf: t1, hosts: [h1]}
""")
    with pytest.raises(ConflictError, match="host h1 is listed twice"):
        build_fabric(load_inventory(inventory))


def test_capture_disagreeing_with_template_is_a_conflict(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, f"""
version: 1
zones:
  - name: z0
    pods:
      - name: p0
        racks:
          - name: r0
            leaf: t0
            hosts:
              - name: h1
                template: hgx-h100
                nvsmi: {FIXTURES}/nvsmi/workstation_pcie_m.txt
""")
    with pytest.raises(ConflictError, match="template has 8 GPUs, the capture shows"):
        build_fabric(load_inventory(inventory))


def test_inventory_errors_are_all_reported_with_paths(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, """
version: 1
zones:
  - name: z0
    oversubscription: -1
    pods:
      - name: p0
        racks:
          - {name: r0, hosts: [{name: h1, nic_gbit: 0}], colour: blue}
""")
    with pytest.raises(ValidationError) as info:
        load_inventory(inventory)
    paths = {issue.path for issue in info.value.issues}
    assert {"zones[0].oversubscription", "zones[0].pods[0].racks[0].hosts[0].nic_gbit",
            "zones[0].pods[0].racks[0].colour"} <= paths


def test_unknown_template_names_the_host(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, """
version: 1
zones: [{name: z0, pods: [{name: p0, racks: [{name: r0, hosts: [{name: h1, template: dgx-9}]}]}]}]
""")
    with pytest.raises(NotFoundError, match="host h1; known: "):
        build_fabric(load_inventory(inventory))


def test_capture_for_unknown_host_is_refused(captured: tuple[Path, Path]) -> None:
    with pytest.raises(NotFoundError, match="not in the inventory"):
        build_fabric(load_inventory(captured[1]),
                     Captures(nvsmi={"ghost": FIXTURES / "nvsmi" / "dgx_h100_m.txt"}))


def test_nvlink_domains_and_k8s_cliques(tmp_path: Path) -> None:
    inventory = _inventory(tmp_path, """
version: 1
defaults: {template: gb200-nvl}
zones:
  - name: us-east-1a
    pods:
      - name: p0
        racks:
          - {name: r0, leaf: t0, hosts: [h1, h2]}
nvlink_domains:
  - {name: nvl72-a, hosts: [h1, h2]}
""")
    spec = build_fabric(load_inventory(inventory))
    assert DistanceModel(spec).tier("h1/gpu0", "h2/gpu3").label == "nvlink"


def test_example_cluster_builds_cleanly() -> None:
    from topology.documents import packaged_config
    spec = build_fabric(load_inventory(packaged_config("clusters/example.yaml")))
    assert len(spec.hosts) == 12 and not spec.conflicts
    assert {leaf.rail for leaf in spec.leaves if leaf.pod == "a1"} == set(range(8))
