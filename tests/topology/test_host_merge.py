"""Merging real-shaped captures into hosts: nvidia-smi + LLDP + NCCL XML on DGX H100 boxes."""

from __future__ import annotations

from pathlib import Path

import pytest

from topology.build import build_fabric
from topology.distance import DistanceModel
from topology.inventory import load_inventory
from topology.spec import FabricSpec
from topology.tiers import Tier

FIXTURES = Path(__file__).parents[1] / "fixtures"
NETDEVS = {"mlx5_0": "enp26s0np0", "mlx5_3": "enp60s0np0", "mlx5_4": "enp77s0np0",
           "mlx5_5": "enp94s0np0", "mlx5_6": "enp156s0np0", "mlx5_9": "enp188s0np0",
           "mlx5_10": "enp204s0np0", "mlx5_11": "enp220s0np0"}


def _inventory(tmp_path: Path, hosts: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(f"""
version: 1
zones:
  - name: z0
    pods:
      - name: p0
        racks:
          - name: r0
            hosts:
{hosts}
""")
    return path


def _dgx_host(name: str, tmp: Path, cable: int) -> str:
    """A DGX whose NICs sit on switch ports ``…{cable}`` and whose NIC GUIDs end in it
    (two hosts cannot share ports or GUIDs: the second host gets its own captures)."""
    lldp, nccl = tmp / f"{name}.lldp.json0", tmp / f"{name}.nccl.xml"
    lldp.write_text((FIXTURES / "lldp" / "rail_host.json0").read_text()
                    .replace("swp17s0", f"swp{cable}s0").replace("Ethernet17", f"Ethernet{cable}"))
    nccl.write_text((FIXTURES / "nccl" / "hgx_h100_8gpu.xml").read_text()
                    .replace('guid="0xa088c2', f'guid="0x{cable:02x}88c2'))
    netdevs = ", ".join(f"{k}: {v}" for k, v in NETDEVS.items())
    return f"""              - name: {name}
                gpu_type: H100
                nvsmi: {FIXTURES}/nvsmi/dgx_h100_m.txt
                lldp: {lldp}
                nccl: {nccl}
                netdevs: {{{netdevs}}}
"""


@pytest.fixture(scope="module")
def dgx_pair(tmp_path_factory: pytest.TempPathFactory) -> FabricSpec:
    tmp = tmp_path_factory.mktemp("dgx")
    hosts = _dgx_host("dgx-01", tmp, 17) + _dgx_host("dgx-02", tmp, 18)
    return build_fabric(load_inventory(_inventory(tmp, hosts)))


def test_nvsmi_gives_shape_numa_and_pcie_switches(dgx_pair: FabricSpec) -> None:
    host = dgx_pair.host("dgx-01")
    assert len(host.gpus) == 8 and len(host.nics) == 8 and host.sockets == 2
    assert [g.numa for g in host.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    gpu0, nic0 = host.gpus[0], host.nic("mlx5_0")
    assert gpu0.pcie_switch is not None and gpu0.pcie_switch == nic0.pcie_switch
    assert host.gpus[1].pcie_switch != gpu0.pcie_switch
    assert [g.nic for g in host.gpus] == list(NETDEVS)
    assert host.gpu_links[0][5] == "NV18"


def test_lldp_places_nics_and_rails_are_discovered(dgx_pair: FabricSpec) -> None:
    host = dgx_pair.host("dgx-02")
    assert host.nic("mlx5_6").leaf == "leaf-r4" and host.nic("mlx5_6").port == "swp18s0"
    rails = {leaf.name: leaf.rail for leaf in dgx_pair.leaves}
    assert rails == {f"leaf-r{i}": i for i in range(8)}
    assert any("were discovered (LLDP, ibnetdiscover)" in w for w in dgx_pair.warnings)


def test_merged_hosts_answer_distances(dgx_pair: FabricSpec) -> None:
    model = DistanceModel(dgx_pair)
    assert model.tier("dgx-01/gpu0", "dgx-02/gpu0") == Tier.SAME_LEAF
    assert model.tier("dgx-01/gpu0", "dgx-02/gpu1") == Tier.SAME_POD
    assert model.tier("dgx-01/gpu0", "dgx-01/gpu7") == Tier.NVLINK
    no_nvlink = DistanceModel(dgx_pair, nvlink_across_processes=False)
    assert no_nvlink.tier("dgx-01/gpu0", "dgx-01/gpu7") == Tier.CROSS_SOCKET
    assert no_nvlink.tier("dgx-01/gpu0", "dgx-01/gpu1") == Tier.HOST_BRIDGE


def test_nccl_speeds_override_the_default(dgx_pair: FabricSpec) -> None:
    assert dgx_pair.host("dgx-01").nic("mlx5_0").gbit == 400


def test_nccl_capture_alone_gives_a_host(tmp_path: Path) -> None:
    hosts = f"""              - name: a100-box
                nccl: {FIXTURES}/nccl/a100_pcie_4gpu.xml
"""
    spec = build_fabric(load_inventory(_inventory(tmp_path, hosts)))
    host = spec.host("a100-box")
    assert len(host.gpus) == 4
    assert sum(code.startswith("NV") for row in host.gpu_links for code in row) >= 4


def test_gb200_all_sys_falls_back_to_index_mapping(tmp_path: Path) -> None:
    hosts = f"""              - name: gb-01
                nvsmi: {FIXTURES}/nvsmi/gb200_m.txt
"""
    spec = build_fabric(load_inventory(_inventory(tmp_path, hosts)), keep_going=True)
    host = spec.host("gb-01")
    assert [g.nic for g in host.gpus][:2] == [host.nics[0].device, host.nics[1].device]
    assert any("SYS" in w for w in spec.warnings)
