"""RDMA device maps (issue 16): every accepted output reads alike, the map replaces a
hand-written ``netdevs``, its GUIDs match InfiniBand HCAs, and ``topo collect`` gathers
it (with ibnetdiscover) from sysfs and posts it to a real ``toposched serve``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port
from tests.sidecar.harness import (
    AUTH,
    OPERATOR_TOKEN,
    SERVER_TOKENS,
    START_TIMEOUT_S,
    Proc,
    _cli,
    _spawn,
    wait_for,
)
from topology.build import Captures, build_fabric
from topology.errors import ParseError
from topology.inventory import load_inventory
from topology.rdma_devices import parse_rdma_devices
from topology.rdma_sysfs import collect_rdma_devices

FIXTURES = Path(__file__).parents[1] / "fixtures"
NVSMI = FIXTURES / "nvsmi" / "dgx_h100_m.txt"
LLDP = FIXTURES / "lldp" / "rail_host.json0"
SUBNET = FIXTURES / "ibnetdiscover" / "topograph_dgx_h100.out"
NETDEVS = {"mlx5_0": "enp26s0np0", "mlx5_3": "enp60s0np0", "mlx5_4": "enp77s0np0",
           "mlx5_5": "enp94s0np0", "mlx5_6": "enp156s0np0", "mlx5_9": "enp188s0np0",
           "mlx5_10": "enp204s0np0", "mlx5_11": "enp220s0np0"}
C01, C01_HCA1 = "a06-p1-dgx-02-c01", "e09d7303008594bc"


def _sysfs(root: Path, guids: dict[str, str]) -> Path:
    """A /sys/class/infiniband tree as a ConnectX host shows it (RoCE ports carry their
    interface in gid_attrs, InfiniBand ports their GUID in GID 0)."""
    base = root / "class" / "infiniband"
    for i, (device, netdev) in enumerate(NETDEVS.items()):
        pci = root / "devices" / f"0000:{0x1a + i:02x}:00.0"
        (pci / "net" / netdev).mkdir(parents=True)
        node = base / device
        port = node / "ports" / "1"
        (port / "gids").mkdir(parents=True)
        (port / "gid_attrs" / "ndevs").mkdir(parents=True)
        (node / "device").symlink_to(pci)
        guid = guids.get(device, f"1c34da0300a1b2{i:02x}")
        (node / "node_guid").write_text(":".join(guid[k:k + 4] for k in range(0, 16, 4)) + "\n")
        (node / "node_desc").write_text(f"{C01} {device}\n")
        (port / "state").write_text("4: ACTIVE\n")
        (port / "rate").write_text("400 Gb/sec (4X NDR)\n")
        (port / "link_layer").write_text("InfiniBand\n")
        (port / "gids" / "0").write_text(
            "fe80:0000:0000:0000:" + ":".join(guid[k:k + 4] for k in range(0, 16, 4)) + "\n")
        (port / "gid_attrs" / "ndevs" / "0").write_text(f"{netdev}\n")
    return base


@pytest.mark.parametrize("text", [
    "\n".join(f"{d} port 1 ==> {n} (Up)" for d, n in NETDEVS.items()),
    "\n".join(f"0000:{0x1a + i:02x}:00.0 {d} (MT4129 - MT2334XZ0AWQ) NVIDIA ConnectX-7 "
              f"fw 28.39.1002 port 1 (ACTIVE) ==> {n} (Up)"
              for i, (d, n) in enumerate(NETDEVS.items())),
    "\n".join(f"link {d}/1 state ACTIVE physical_state LINK_UP netdev {n}"
              for d, n in NETDEVS.items()),
    json.dumps([{"ifindex": i, "ifname": d, "port": 1, "state": "ACTIVE",
                 "physical_state": "LINK_UP", "netdev": n, "netdev_index": 10 + i}
                for i, (d, n) in enumerate(NETDEVS.items())]),
], ids=["ibdev2netdev", "ibdev2netdev-v", "rdma-link", "rdma-link-json"])
def test_every_tool_gives_the_same_map(text: str) -> None:
    assert parse_rdma_devices(text, "x").netdevs() == NETDEVS


def test_ibstat_gives_guids_and_merges_with_another_tool() -> None:
    text = ("mlx5_0 port 1 ==> ibp26s0 (Up)\n"
            "CA 'mlx5_0'\n\tCA type: MT4129\n\tNode GUID: 0xe09d7303008594bc\n\tPort 1:\n"
            "\t\tState: Active\n\t\tRate: 400\n\t\tPort GUID: 0xe09d7303008594bc\n"
            "\t\tLink layer: InfiniBand\n")
    found = parse_rdma_devices(text, "x")
    assert found.tools == ["ibdev2netdev", "ibstat"]
    (device,) = found.devices
    assert (device.netdev(), device.node_guid, device.ports[0].rate_gbit) == (
        "ibp26s0", "0xe09d7303008594bc", 400.0)


@pytest.mark.parametrize(("text", "message"), [
    ("nothing useful here\n", "no RDMA device found"),
    ('{"rdma_devices": [{"device": "mlx5_0", "node_guid": "zz"}]}', "not a GUID"),
    ('{"rdma_devices": [{"ports": []}]}', "without a device name"),
    ("CA 'mlx5_0'\n\tNode GUID: 0xnothex\n", "not a GUID"),
])
def test_errors_name_where(text: str, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_rdma_devices(text, "rdma.txt")
    assert message in str(caught.value) and "rdma.txt" in str(caught.value)


def test_the_map_replaces_hand_written_netdevs(tmp_path: Path) -> None:
    (tmp_path / "rdma.txt").write_text("\n".join(f"{d} port 1 ==> {n} (Up)"
                                                 for d, n in NETDEVS.items()))
    (tmp_path / "inv.yaml").write_text(f"""version: 1
zones: [{{name: z, pods: [{{name: p, racks: [{{name: r, hosts: [
  {{name: dgx, nvsmi: {NVSMI}, lldp: {LLDP}, rdma: rdma.txt}}]}}]}}]}}]
""")
    spec = build_fabric(load_inventory(tmp_path / "inv.yaml"))
    leaves = {nic.device: nic.leaf for nic in spec.host("dgx").nics}
    assert leaves == {d: f"leaf-r{i}" for i, d in enumerate(NETDEVS)}


def test_sysfs_reading(tmp_path: Path) -> None:
    found = collect_rdma_devices(_sysfs(tmp_path, {"mlx5_0": C01_HCA1}))
    parsed = parse_rdma_devices(json.dumps(found), "sysfs")
    assert parsed.netdevs() == NETDEVS
    first = parsed.devices[0]
    assert (first.pci, first.node_guid, first.ports[0].guid, first.ports[0].state) == (
        "0000:1a:00.0", f"0x{C01_HCA1}", f"0x{C01_HCA1}", "ACTIVE")
    assert collect_rdma_devices(tmp_path / "absent")["rdma_devices"] == []


def test_guids_from_the_map_match_hcas_the_subnet_does_not_name(tmp_path: Path) -> None:
    anonymous = SUBNET.read_text().replace(f'"{C01} HCA-1"', '"MT4129 ConnectX7"')
    rdma = json.dumps(collect_rdma_devices(_sysfs(tmp_path, {"mlx5_0": C01_HCA1})))
    (tmp_path / "subnet.out").write_text(anonymous)
    (tmp_path / "rdma.json").write_text(rdma)
    spec = build_fabric(None, Captures(nvsmi={C01: NVSMI}, rdma={C01: tmp_path / "rdma.json"},
                                       ibnetdiscover=[tmp_path / "subnet.out"]))
    assert spec.host(C01).nic("mlx5_0").leaf == "A09-P1-IBLEAF-01-02"


def _fake_tools(bin_dir: Path, subnet: Path) -> None:
    bin_dir.mkdir()
    for name, fixture in (("nvidia-smi", NVSMI), ("ibnetdiscover", subnet)):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\ncat {fixture}\n")
        tool.chmod(0o755)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = Proc(_spawn(_cli("serve", "--port", str(port)), tmp_path / "serve.log",
                       SERVER_TOKENS), tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
                 START_TIMEOUT_S, "the scheduler")
        yield url
    finally:
        proc.stop(signal.SIGTERM, 10)


@pytest.mark.process
@pytest.mark.timeout(120)
def test_collect_gathers_and_posts_to_a_real_scheduler(tmp_path: Path, server: str) -> None:
    subnet = tmp_path / "subnet.out"
    subnet.write_text(SUBNET.read_text().replace(f'"{C01} HCA-1"', '"MT4129 ConnectX7"'))
    _fake_tools(tmp_path / "bin", subnet)
    sysfs = _sysfs(tmp_path / "sys", {"mlx5_0": C01_HCA1})
    done = subprocess.run(
        [sys.executable, "-m", "api.cli.main", "topo", "collect", "--sysfs-root", str(sysfs),
         "--out-dir", str(tmp_path / "out"), "--post", server, "--host", C01, "--json"],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
             "TOPOSCHED_OPERATOR_TOKEN": OPERATOR_TOKEN})
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert not results["lldp"]["ok"] and "lldpctl" in results["lldp"]["error"]
    assert {name: r.get("posted") for name, r in results.items() if r["ok"]} == {
        "nvidia-smi": 200, "rdma-devices": 200, "ibnetdiscover": 200}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ibnetdiscover.txt", "nvidia-smi.txt", "rdma-devices.json"]
    fabric = httpx.get(f"{server}/v1/topology/fabric", headers=AUTH, timeout=10).json()
    (host,) = fabric["hosts"]
    nics = {nic["device"]: nic["leaf"] for nic in host["nics"]}
    assert nics["mlx5_0"] == "A09-P1-IBLEAF-01-02"  # matched by the collected GUID
    assert nics["mlx5_5"] == "A09-P1-IBLEAF-04-02"  # matched by its description
