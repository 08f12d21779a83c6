"""Mis-cabling (issue 16): two cables swapped on one host used to drop a pod from 8 rails
to 6 without a word; now the rails stay and each swapped NIC is named with its switch
and port — in ``topo build``'s warnings (LLDP here; InfiniBand in test_infiniband)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli.main import run
from topology.cabling import discover_rails, rail_breaks
from topology.synth import SynthParams, synth_cluster
from topology.writers import lldp_json0, write_captures


def _swapped(host_nics: tuple, a: int, b: int) -> tuple:  # type: ignore[type-arg]
    nics = list(host_nics)
    nics[a], nics[b] = (nics[a].model_copy(update={"leaf": nics[b].leaf, "port": nics[b].port}),
                        nics[b].model_copy(update={"leaf": nics[a].leaf, "port": nics[a].port}))
    return tuple(nics)


def test_a_swapped_pair_keeps_eight_rails_and_names_both_nics(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = synth_cluster(SynthParams(zones=1, pods_per_zone=1, racks_per_pod=4,
                                     hosts_per_rack=1))
    inventory = write_captures(spec, tmp_path)
    victim = spec.hosts[2]
    recabled = victim.model_copy(update={"nics": _swapped(victim.nics, 1, 2)})
    (tmp_path / "captures" / f"{victim.name}.lldp.json").write_text(lldp_json0(recabled))
    assert run(["topo", "build", "--inventory", str(inventory), "-o",
                str(tmp_path / "f.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rails"][0]["leaves_by_rail"] == {str(i): f"z0-p0-rail{i}" for i in range(8)}
    breaks = [w for w in summary["warnings"] if w.startswith("rail break")]
    port = victim.nics[2].port
    assert breaks == [
        f"rail break: host {victim.name} NIC mlx5_1 (rail 1) is cabled to z0-p0-rail2 port "
        f"{port}, a rail-2 leaf",
        f"rail break: host {victim.name} NIC mlx5_2 (rail 2) is cabled to z0-p0-rail1 port "
        f"{victim.nics[1].port}, a rail-1 leaf"]


def test_a_clean_fabric_has_no_break() -> None:
    assert rail_breaks(synth_cluster(SynthParams(zones=1, pods_per_zone=2))) == []


@pytest.mark.parametrize(("attached", "expected"), [
    ({"a": [("h1", 0), ("h2", 0), ("h3", 1)], "b": [("h1", 1), ("h2", 1), ("h3", 0)]},
     {"a": 0, "b": 1}),                                      # majority keeps the rail
    ({"a": [("h1", 0), ("h2", 1)], "b": [("h1", 1), ("h2", 0)]}, {}),  # no majority
    ({"tor": [("h1", 0), ("h1", 1), ("h2", 0), ("h2", 1)]}, {}),      # one leaf per host
    ({"a": [("h1", 0)], "b": [("h1", 1)]}, {}),              # one host is not a rail
])
def test_discovery_rules(attached: dict[str, list[tuple[str, int]]],
                         expected: dict[str, int]) -> None:
    assert discover_rails(attached) == expected
