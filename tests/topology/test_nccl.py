"""Tests for the NCCL topology XML parser (topology/nccl.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topology.errors import NotFoundError, ParseError
from topology.nccl import (
    MAX_DEPTH,
    NcclCpu,
    NcclGpu,
    NcclNet,
    NcclNvlink,
    NcclTopology,
    _read_tree,
    looks_like_nccl_xml,
    parse_nccl_xml,
)
from topology.source import MAX_CAPTURE_BYTES, read_capture

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nccl"
NVSWITCH = "fffffff:ff:ff.0"


def load(name: str) -> NcclTopology:
    path = FIXTURES / name
    return parse_nccl_xml(read_capture(path), str(path))


def parse_error(text: str, source: str = "test.xml") -> ParseError:
    with pytest.raises(ParseError) as info:
        parse_nccl_xml(text, source)
    return info.value


# --- builders: XML snippets with keyword defaults; None leaves an attribute out ----------


def attrs(**values: str | None) -> str:
    return "".join(f' {key}="{value}"' for key, value in values.items() if value is not None)


def system_xml(body: str = "") -> str:
    return f'<system version="1">{body}</system>'


def cpu_xml(body: str = "", *, numaid: str | None = "0", arch: str | None = "x86_64") -> str:
    return f"<cpu{attrs(numaid=numaid, arch=arch)}>{body}</cpu>"


def pci_xml(body: str = "", *, busid: str | None = "0000:18:00.0",
            cls: str | None = "0x030200", link_width: str | None = "16") -> str:
    return f"<pci{attrs(busid=busid, link_width=link_width, **{'class': cls})}>{body}</pci>"


def gpu_xml(body: str = "", *, dev: str | None = "0", sm: str | None = "90",
            rank: str | None = "0", gdr: str | None = "1") -> str:
    return f"<gpu{attrs(dev=dev, sm=sm, rank=rank, gdr=gdr)}>{body}</gpu>"


def nvlink_xml(*, target: str | None = NVSWITCH, count: str | None = "18",
               tclass: str | None = "0x068000") -> str:
    return f"<nvlink{attrs(target=target, count=count, tclass=tclass)}/>"


def net_xml(*, name: str | None = "mlx5_0", dev: str | None = "0",
            speed: str | None = "400000", port: str | None = "1",
            latency: str | None = "0.000000", gdr: str | None = "1") -> str:
    return f"<net{attrs(name=name, dev=dev, speed=speed, port=port, latency=latency, gdr=gdr)}/>"


def nic_xml(*nets: str) -> str:
    return f"<nic>{''.join(nets) or net_xml()}</nic>"


def one_gpu_system(gpu: str = "", *, pci_attrs: dict[str, str | None] | None = None) -> str:
    return system_xml(cpu_xml(pci_xml(gpu or gpu_xml(), **(pci_attrs or {}))))


# --- HGX H100: 8 GPUs on 4 PCIe switches on 2 CPUs, NVSwitch, 8 x 400G -------------------

H100_SWITCH = {
    "0000:18:00.0": "0000:15:00.0", "0000:2a:00.0": "0000:15:00.0",
    "0000:3a:00.0": "0000:38:00.0", "0000:5d:00.0": "0000:38:00.0",
    "0000:9a:00.0": "0000:97:00.0", "0000:ab:00.0": "0000:97:00.0",
    "0000:ba:00.0": "0000:b8:00.0", "0000:db:00.0": "0000:b8:00.0",
}


def test_h100_cpus() -> None:
    topo = load("hgx_h100_8gpu.xml")
    assert topo.cpus[0] == NcclCpu(
        numaid=0, affinity="00000000,000000ff,ffffffff,ffff0000,00000000,00ffffff,ffffffff",
        arch="x86_64", vendor="GenuineIntel")
    assert [cpu.numaid for cpu in topo.cpus] == [0, 1]


def test_h100_gpus_exact() -> None:
    topo = load("hgx_h100_8gpu.xml")
    assert topo.gpus[0] == NcclGpu(
        busid="0000:18:00.0", dev=0, rank=0, sm=90, gdr=True, numa=0,
        pci_path=["0000:15:00.0"], link_speed="32.0 GT/s PCIe", link_width=16,
        nvlinks=[NcclNvlink(target=NVSWITCH, count=18, tclass="0x068000",
                            to_nvswitch=True, to_gpu=False)])
    assert [gpu.busid for gpu in topo.gpus] == list(H100_SWITCH)
    assert [gpu.dev for gpu in topo.gpus] == list(range(8))
    assert [gpu.numa for gpu in topo.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [gpu.pci_path for gpu in topo.gpus] == [[s] for s in H100_SWITCH.values()]


def test_h100_nets_exact() -> None:
    topo = load("hgx_h100_8gpu.xml")
    assert topo.nets[7] == NcclNet(
        name="mlx5_7", dev=7, speed_mbps=400000, port=1, latency=0.0, gdr=True,
        guid="0xa088c20300e8a204", busid="0000:dc:00.0", numa=1, pci_path=["0000:b8:00.0"])
    assert [net.name for net in topo.nets] == [f"mlx5_{i}" for i in range(8)]
    assert {net.speed_mbps for net in topo.nets} == {400000}


def test_h100_pci_classes() -> None:
    topo = load("hgx_h100_8gpu.xml")
    assert topo.pci_classes["0000:15:00.0"] == "0x060400"
    assert topo.pci_classes["0000:18:00.0"] == "0x030200"
    assert topo.pci_classes["0000:19:00.0"] == "0x020700"
    assert len(topo.pci_classes) == 4 + 8 + 8


def test_h100_nvswitch_helpers() -> None:
    topo = load("hgx_h100_8gpu.xml")
    assert topo.nvswitch_connected()
    assert topo.nvlink_count("0000:18:00.0", "0000:db:00.0") == 18
    assert topo.nvlink_count("0000:18:00.0", "0000:18:00.0") == 0


@pytest.mark.parametrize(("gpu", "switch"), H100_SWITCH.items())
def test_h100_pcie_switch_of(gpu: str, switch: str) -> None:
    assert load("hgx_h100_8gpu.xml").pcie_switch_of(gpu) == switch


@pytest.mark.parametrize(("gpu", "nets"), [
    ("0000:18:00.0", ["mlx5_0", "mlx5_1"]),
    ("0000:5d:00.0", ["mlx5_2", "mlx5_3"]),
    ("0000:9a:00.0", ["mlx5_4", "mlx5_5"]),
    ("0000:db:00.0", ["mlx5_6", "mlx5_7"]),
])
def test_h100_nearest_nets_share_the_switch(gpu: str, nets: list[str]) -> None:
    assert load("hgx_h100_8gpu.xml").nearest_nets(gpu) == nets


def test_h100_helpers_accept_other_busid_spellings() -> None:
    topo = load("hgx_h100_8gpu.xml")
    assert topo.nvlink_count("00000000:18:00.0", "DB:00.0") == 18
    assert topo.pcie_switch_of("00000000:DC:00.0") == "0000:b8:00.0"
    assert topo.nearest_nets("2A:00.0") == ["mlx5_0", "mlx5_1"]


@pytest.mark.parametrize("call", [
    lambda t: t.nvlink_count("0000:18:00.0", "0000:77:00.0"),
    lambda t: t.nearest_nets("0000:15:00.0"),
    lambda t: t.pcie_switch_of("0000:15:00.0"),
    lambda t: t.pcie_switch_of("not-a-busid"),
])
def test_h100_unknown_busids_are_not_found(call: Callable[[NcclTopology], object]) -> None:
    topo = load("hgx_h100_8gpu.xml")
    with pytest.raises(NotFoundError):
        call(topo)


# --- A100 PCIe: direct GPU-GPU NVLink bridges, one NIC ----------------------------------


def test_a100_gpus_and_bridges() -> None:
    topo = load("a100_pcie_4gpu.xml")
    assert [gpu.busid for gpu in topo.gpus] == [
        "0000:01:00.0", "0000:41:00.0", "0000:c3:00.0", "0000:c4:00.0"]
    assert {gpu.sm for gpu in topo.gpus} == {80}
    # The file spells this target in upper case; it is normalised.
    assert topo.gpus[2].nvlinks == [NcclNvlink(target="0000:c4:00.0", count=4,
                                               tclass="0x030200", to_nvswitch=False,
                                               to_gpu=True)]
    assert topo.gpus[0].pci_path == []
    assert topo.gpus[0].link_speed == "16.0 GT/s PCIe"


def test_a100_nvlink_counts() -> None:
    topo = load("a100_pcie_4gpu.xml")
    assert not topo.nvswitch_connected()
    assert topo.nvlink_count("0000:01:00.0", "0000:41:00.0") == 4
    assert topo.nvlink_count("0000:c4:00.0", "0000:c3:00.0") == 4
    assert topo.nvlink_count("0000:01:00.0", "0000:c3:00.0") == 0


def test_a100_switch_and_nets() -> None:
    topo = load("a100_pcie_4gpu.xml")
    assert topo.pcie_switch_of("0000:01:00.0") is None
    assert topo.pcie_switch_of("0000:c3:00.0") == "0000:c1:00.0"
    assert topo.pcie_switch_of("0000:c5:00.0") == "0000:c1:00.0"
    assert topo.nets == [NcclNet(
        name="mlx5_0", dev=0, speed_mbps=200000, port=1, latency=0.0, gdr=True,
        guid="0x1c34da0300a7b6e2", busid="0000:c5:00.0", numa=0, pci_path=["0000:c1:00.0"])]
    assert topo.nearest_nets("0000:c3:00.0") == ["mlx5_0"]
    assert topo.nearest_nets("0000:01:00.0") == ["mlx5_0"]


# --- cloud hand-written file: bare pci entries under virtual bridges ---------------------


def test_cloud_bare_gpus() -> None:
    topo = load("cloud_virtual_bridges.xml")
    assert [gpu.busid for gpu in topo.gpus] == [
        "0001:00:00.0", "0002:00:00.0", "0003:00:00.0", "0004:00:00.0",
        "000b:00:00.0", "000c:00:00.0", "000d:00:00.0", "000e:00:00.0"]
    assert topo.gpus[6] == NcclGpu(busid="000d:00:00.0", numa=3, pci_path=["ffff:ff:04.0"],
                                   link_speed="16 GT/s", link_width=16)
    assert [cpu.numaid for cpu in topo.cpus] == [0, 1, 2, 3]


def test_cloud_bare_nics_are_named_by_busid() -> None:
    topo = load("cloud_virtual_bridges.xml")
    assert topo.nets[0] == NcclNet(name="0101:00:00.0", busid="0101:00:00.0", numa=0,
                                   pci_path=["ffff:ff:01.0"])
    assert [net.numa for net in topo.nets] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_cloud_helpers() -> None:
    topo = load("cloud_virtual_bridges.xml")
    assert not topo.nvswitch_connected()
    assert topo.nvlink_count("0001:00:00.0", "0002:00:00.0") == 0
    assert topo.pcie_switch_of("000b:00:00.0") == "ffff:ff:03.0"
    assert topo.pcie_switch_of("0108:00:00.0") == "ffff:ff:04.0"
    assert topo.nearest_nets("000d:00:00.0") == ["0107:00:00.0", "0108:00:00.0"]
    assert topo.nearest_nets("0003:00:00.0") == ["0103:00:00.0", "0104:00:00.0"]


# --- nic directly under cpu ---------------------------------------------------------------


def test_nic_under_cpu_nets() -> None:
    topo = load("nic_under_cpu.xml")
    assert topo.nets == [
        NcclNet(name="eth1", dev=0, speed_mbps=200000, port=0, latency=0.0, gdr=False,
                numa=0),
        NcclNet(name="eth2", dev=1, speed_mbps=200000, port=0, latency=0.0, gdr=False,
                numa=0),
    ]
    assert {gpu.gdr for gpu in topo.gpus} == {False}


def test_nic_under_cpu_nearest_nets() -> None:
    topo = load("nic_under_cpu.xml")
    # Same CPU as the nets.
    assert topo.nearest_nets("0000:05:00.0") == ["eth1", "eth2"]
    # No net on this GPU's CPU: every net is equally far.
    assert topo.nearest_nets("0000:85:00.0") == ["eth1", "eth2"]
    assert topo.pcie_switch_of("0000:85:00.0") == "0000:84:00.0"
    assert topo.nvswitch_connected()


def test_nearest_nets_prefers_own_cpu_over_the_other() -> None:
    text = system_xml(
        cpu_xml(pci_xml(busid="0000:05:00.0") + nic_xml(net_xml(name="eth1")))
        + cpu_xml(pci_xml(gpu_xml(dev="1"), busid="0000:85:00.0")
                  + nic_xml(net_xml(name="eth2", dev="1")), numaid="1"))
    topo = parse_nccl_xml(text)
    assert topo.nearest_nets("0000:05:00.0") == ["eth1"]
    assert topo.nearest_nets("0000:85:00.0") == ["eth2"]


def test_nearest_nets_prefers_the_deeper_switch() -> None:
    inner = pci_xml(
        pci_xml(gpu_xml(), busid="0000:1a:00.0")
        + pci_xml(nic_xml(net_xml(name="near")), busid="0000:1b:00.0", cls="0x020700"),
        busid="0000:19:00.0", cls="0x060400")
    outer = pci_xml(inner + pci_xml(nic_xml(net_xml(name="far", dev="1")),
                                    busid="0000:1c:00.0", cls="0x020700"),
                    busid="0000:17:00.0", cls="0x060400")
    topo = parse_nccl_xml(system_xml(cpu_xml(outer)))
    assert topo.gpus[0].pci_path == ["0000:17:00.0", "0000:19:00.0"]
    assert topo.nearest_nets("0000:1a:00.0") == ["near"]
    assert topo.pcie_switch_of("0000:1a:00.0") == "0000:19:00.0"
    assert topo.pcie_switch_of("0000:1c:00.0") == "0000:17:00.0"


def test_nets_of_unknown_cpu_rank_below_own_cpu() -> None:
    text = system_xml(nic_xml(net_xml(name="loose"))
                      + cpu_xml(pci_xml() + nic_xml(net_xml(name="local", dev="1"))))
    topo = parse_nccl_xml(text)
    assert topo.nets[0].numa is None
    assert topo.nearest_nets("0000:18:00.0") == ["local"]


@pytest.mark.parametrize("bridge_class", ["0x060000", "0x068000", None])
def test_only_0604_bridges_count_as_switches(bridge_class: str | None) -> None:
    text = system_xml(cpu_xml(pci_xml(pci_xml(), busid="0000:00:01.0", cls=bridge_class)))
    topo = parse_nccl_xml(text)
    assert topo.gpus[0].pci_path == ["0000:00:01.0"]
    assert topo.pcie_switch_of("0000:18:00.0") is None


def test_nearest_nets_without_nets_is_empty() -> None:
    assert parse_nccl_xml(one_gpu_system()).nearest_nets("0000:18:00.0") == []


# --- smaller shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["0x030000", "0x030200", "0x0302", "0X0302FF"])
def test_bare_pci_of_gpu_class_is_a_gpu(cls: str) -> None:
    topo = parse_nccl_xml(system_xml(cpu_xml(pci_xml(cls=cls))))
    assert [gpu.busid for gpu in topo.gpus] == ["0000:18:00.0"]
    assert topo.gpus[0].dev is None


def test_four_digit_class_is_padded() -> None:
    topo = parse_nccl_xml(system_xml(cpu_xml(pci_xml(cls="0x0302"))))
    assert topo.pci_classes == {"0000:18:00.0": "0x030200"}


def test_gpu_child_wins_without_a_class() -> None:
    topo = parse_nccl_xml(one_gpu_system(gpu_xml(dev="3"), pci_attrs={"cls": None}))
    assert [(gpu.busid, gpu.dev) for gpu in topo.gpus] == [("0000:18:00.0", 3)]
    assert topo.pci_classes == {}


@pytest.mark.parametrize(("written", "normalised"), [
    ("00000000:1A:00.0", "0000:1a:00.0"),
    ("1a:00.0", "0000:1a:00.0"),
    ("0001:0:3.1", "0001:00:03.1"),
])
def test_busids_are_normalised(written: str, normalised: str) -> None:
    topo = parse_nccl_xml(one_gpu_system(pci_attrs={"busid": written}))
    assert topo.gpus[0].busid == normalised


def test_gpus_sorted_by_dev_then_busid() -> None:
    body = (pci_xml(gpu_xml(dev="1"), busid="0000:05:00.0")
            + pci_xml(busid="0000:02:00.0")
            + pci_xml(gpu_xml(dev="0"), busid="0000:09:00.0")
            + pci_xml(busid="0000:01:00.0"))
    topo = parse_nccl_xml(system_xml(cpu_xml(body)))
    assert [(g.dev, g.busid) for g in topo.gpus] == [
        (0, "0000:09:00.0"), (1, "0000:05:00.0"), (None, "0000:01:00.0"),
        (None, "0000:02:00.0")]


def test_negative_numaid_is_unknown() -> None:
    topo = parse_nccl_xml(system_xml(cpu_xml(pci_xml(), numaid="-1")))
    assert topo.cpus == [NcclCpu(numaid=None, arch="x86_64")]
    assert topo.gpus[0].numa is None


def test_unknown_elements_and_attributes_are_ignored() -> None:
    gpu = ('<gpu dev="0" sm="100" rank="0" gdr="1" fabric="0xab">'
           '<c2c bw="40.0" count="10"/>' + nvlink_xml() + "</gpu>")
    text = system_xml(cpu_xml(pci_xml(gpu) + "<storage><gpu dev='x'/></storage>"))
    topo = parse_nccl_xml(text)
    assert topo.gpus[0].sm == 100
    assert topo.nvswitch_connected()


def test_pci_and_nic_directly_under_system() -> None:
    text = system_xml(pci_xml() + nic_xml(net_xml(name="eth0")))
    topo = parse_nccl_xml(text)
    assert topo.cpus == []
    assert topo.gpus[0].numa is None
    assert topo.nets[0].busid is None


def test_pci_nic_with_net_children_is_not_duplicated() -> None:
    text = system_xml(cpu_xml(pci_xml(nic_xml(), cls="0x020700")))
    assert [net.name for net in parse_nccl_xml(text).nets] == ["mlx5_0"]


def test_cpu_link_is_neither_switch_nor_gpu() -> None:
    link = nvlink_xml(target="0000:00:00.0", count="3", tclass="0x060400")
    topo = parse_nccl_xml(one_gpu_system(gpu_xml(link)))
    assert topo.gpus[0].nvlinks[0].to_nvswitch is False
    assert topo.gpus[0].nvlinks[0].to_gpu is False
    assert not topo.nvswitch_connected()


def test_peer_links_listed_on_one_side_only() -> None:
    link = nvlink_xml(target="0000:41:00.0", count="2", tclass="0x030000")
    body = pci_xml(gpu_xml(link)) + pci_xml(gpu_xml(dev="1"), busid="0000:41:00.0")
    topo = parse_nccl_xml(system_xml(cpu_xml(body)))
    assert topo.nvlink_count("0000:41:00.0", "0000:18:00.0") == 2


def test_switch_links_take_the_smaller_count() -> None:
    body = (pci_xml(gpu_xml(nvlink_xml(count="12")))
            + pci_xml(gpu_xml(nvlink_xml(count="6") + nvlink_xml(count="12"), dev="1"),
                      busid="0000:41:00.0"))
    topo = parse_nccl_xml(system_xml(cpu_xml(body)))
    assert topo.nvlink_count("0000:18:00.0", "0000:41:00.0") == 12


def test_nvswitch_connected_needs_every_gpu() -> None:
    body = pci_xml(gpu_xml(nvlink_xml())) + pci_xml(gpu_xml(dev="1"), busid="0000:41:00.0")
    assert not parse_nccl_xml(system_xml(cpu_xml(body))).nvswitch_connected()
    assert not parse_nccl_xml(system_xml()).nvswitch_connected()


def test_xml_declaration_bom_and_comments_are_accepted() -> None:
    text = '\ufeff<?xml version="1.0" encoding="ISO-8859-1"?>\n<!-- x -->' + one_gpu_system()
    assert len(parse_nccl_xml(text).gpus) == 1


# --- errors -------------------------------------------------------------------------------


def test_doctype_with_entities_is_refused() -> None:
    path = FIXTURES / "doctype_entities.xml"
    with pytest.raises(ParseError) as info:
        parse_nccl_xml(read_capture(path), str(path))
    assert "DOCTYPE/entities are not allowed" in info.value.message
    assert info.value.location.source == str(path)
    assert info.value.location.line == 2


@pytest.mark.parametrize(("text", "line"), [
    ('<!ENTITY x "y">' + system_xml(), 1),
    ('<?xml version="1.0"?>\n\n<!doctype system>' + system_xml(), 3),
    ('<!DOCTYPE system SYSTEM "http://example.invalid/nccl.dtd">\n' + system_xml(), 1),
])
def test_any_declaration_is_refused(text: str, line: int) -> None:
    error = parse_error(text)
    assert "DOCTYPE/entities are not allowed" in error.message
    assert error.location.line == line


def test_expat_guard_refuses_declarations_too() -> None:
    # parse_nccl_xml scans the text first; the reader refuses on its own as well.
    with pytest.raises(ParseError, match="DOCTYPE/entities are not allowed"):
        _read_tree('<!DOCTYPE system [<!ENTITY a "b">]><system/>', "guard.xml")


def test_wrong_root() -> None:
    path = FIXTURES / "wrong_root.xml"
    with pytest.raises(ParseError) as info:
        parse_nccl_xml(read_capture(path), str(path))
    assert info.value.message == "root element is <topology>"
    assert info.value.expected == "<system>"
    assert info.value.location.line == 1


def test_truncated_file_names_line_and_column() -> None:
    path = FIXTURES / "truncated.xml"
    with pytest.raises(ParseError) as info:
        parse_nccl_xml(read_capture(path), str(path))
    assert info.value.location.line == 7
    assert info.value.message.startswith("malformed XML: ")
    assert "(column 5)" in info.value.message


@pytest.mark.parametrize(("text", "line", "column"), [
    ('<system version="1">\n  <cpu numaid="0">\n    <<pci/>\n', 3, 6),
    ("", 1, 1),
    ("GPU0\tX \tNV18\tSYS\n", 1, 1),
    ('<system><cpu numaid="0"></system>', 1, 27),
])
def test_malformed_xml(text: str, line: int, column: int) -> None:
    error = parse_error(text)
    assert error.location.line == line
    assert f"(column {column})" in error.message
    assert error.expected == "well-formed XML"


def test_bad_attribute_fixture_names_path_line_and_attribute() -> None:
    path = FIXTURES / "bad_attribute.xml"
    with pytest.raises(ParseError) as info:
        parse_nccl_xml(read_capture(path), str(path))
    assert info.value.location.path == "system/cpu[1]/pci[1]/pci/gpu"
    assert info.value.location.line == 9
    assert info.value.message == 'attribute dev="six" is not a number'
    assert str(info.value).startswith(f"{path}:9 at system/cpu[1]/pci[1]/pci/gpu: ")


@pytest.mark.parametrize(("text", "path", "attribute"), [
    (system_xml(cpu_xml(numaid="zero")), "system/cpu", "numaid"),
    (one_gpu_system(pci_attrs={"link_width": "x16"}), "system/cpu/pci", "link_width"),
    (one_gpu_system(pci_attrs={"link_width": "-1"}), "system/cpu/pci", "link_width"),
    (one_gpu_system(gpu_xml(sm="9.0")), "system/cpu/pci/gpu", "sm"),
    (one_gpu_system(gpu_xml(rank="")), "system/cpu/pci/gpu", "rank"),
    (one_gpu_system(gpu_xml(gdr="yes")), "system/cpu/pci/gpu", "gdr"),
    (one_gpu_system(gpu_xml(nvlink_xml(count="eighteen"))), "system/cpu/pci/gpu/nvlink",
     "count"),
    (one_gpu_system(gpu_xml(nvlink_xml(count="-2"))), "system/cpu/pci/gpu/nvlink", "count"),
    (one_gpu_system(gpu_xml(nvlink_xml() + nvlink_xml(target="gpu1"))),
     "system/cpu/pci/gpu/nvlink[1]", "target"),
    (one_gpu_system(gpu_xml(nvlink_xml(tclass="nvswitch"))), "system/cpu/pci/gpu/nvlink",
     "tclass"),
    (one_gpu_system(pci_attrs={"busid": "0000:18:00"}), "system/cpu/pci", "busid"),
    (one_gpu_system(pci_attrs={"cls": "GPU"}), "system/cpu/pci", "class"),
    (system_xml(cpu_xml(pci_xml(nic_xml(net_xml(speed="400G"))))),
     "system/cpu/pci/nic/net", "speed"),
    (system_xml(cpu_xml(pci_xml(nic_xml(net_xml(latency="fast"))))),
     "system/cpu/pci/nic/net", "latency"),
    (system_xml(cpu_xml(pci_xml(nic_xml(net_xml(), net_xml(latency="nan"))))),
     "system/cpu/pci/nic/net[1]", "latency"),
    (system_xml(cpu_xml(nic_xml(net_xml(port="p1")))), "system/cpu/nic/net", "port"),
    (system_xml(cpu_xml(nic_xml(net_xml(gdr="2")))), "system/cpu/nic/net", "gdr"),
])
def test_bad_attributes_name_path_and_attribute(text: str, path: str, attribute: str) -> None:
    error = parse_error(text)
    assert error.location.path == path
    assert error.location.source == "test.xml"
    assert error.location.line == 1
    assert error.message.startswith(f'attribute {attribute}="')
    assert error.expected


@pytest.mark.parametrize(("text", "path", "message"), [
    (one_gpu_system(pci_attrs={"busid": None}), "system/cpu/pci", "missing attribute busid"),
    (one_gpu_system(gpu_xml(nvlink_xml(target=None))), "system/cpu/pci/gpu/nvlink",
     "missing attribute target"),
    (one_gpu_system(gpu_xml(nvlink_xml(count=None))), "system/cpu/pci/gpu/nvlink",
     "missing attribute count"),
    (one_gpu_system(gpu_xml(nvlink_xml(tclass=None))), "system/cpu/pci/gpu/nvlink",
     "missing attribute tclass"),
    (system_xml(cpu_xml(nic_xml(net_xml(name=None)))), "system/cpu/nic/net",
     "net has no name attribute"),
    (system_xml(cpu_xml(gpu_xml())), "system/cpu/gpu", "gpu element outside a pci"),
    (system_xml(gpu_xml()), "system/gpu", "gpu element outside a pci"),
    (system_xml(cpu_xml(nic_xml(net_xml()) + "<nic>" + gpu_xml() + "</nic>")),
     "system/cpu/nic[1]/gpu", "gpu element outside a pci"),
    (one_gpu_system(gpu_xml() + gpu_xml(dev="1")), "system/cpu/pci/gpu[1]",
     "a pci holds more than one gpu"),
    (system_xml(cpu_xml(pci_xml() + "\n" + pci_xml(busid="18:00.0"))), "system/cpu/pci[1]",
     "busid 0000:18:00.0 appears twice (first on line 1)"),
])
def test_structural_errors(text: str, path: str, message: str) -> None:
    error = parse_error(text)
    assert error.location.path == path
    assert error.message == message


def test_error_line_points_at_the_element() -> None:
    text = system_xml("\n" + cpu_xml("\n\n" + pci_xml(gpu_xml(dev="x"))))
    assert parse_error(text).location.line == 4


def test_too_deep_nesting() -> None:
    text = system_xml(cpu_xml("<pci busid='0:1:0.0'>" * MAX_DEPTH))
    error = parse_error(text)
    assert error.message == f"elements nested deeper than {MAX_DEPTH}"


def test_oversized_input_is_refused_before_parsing() -> None:
    error = parse_error(" " * (MAX_CAPTURE_BYTES + 1))
    assert "larger than" in error.message


def test_long_values_are_shortened_in_messages() -> None:
    error = parse_error(system_xml(cpu_xml(numaid="9" * 100_000 + "x")))
    assert len(str(error)) < 200


_rng = random.Random(20240611)
JUNK = {
    "random-markup": "".join(_rng.choice("<>/=\"' abcxyz\n&;!?") for _ in range(2_000_000)),
    "deep": "<system>" + "<pci>" * 400_000,
    "entities": "<!ENTITY a 'b'>" * 140_000,
    "long-attribute": "<system version='" + "9" * 2_000_000 + "'>" + "<gpu dev='1'/>",
    "many-unknown": "<system>" + "<x a='1'/>" * 200_000 + "</system>",
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", JUNK)
def test_two_megabytes_of_junk_finish_fast(name: str) -> None:
    try:
        topo = parse_nccl_xml(JUNK[name], name)
    except ParseError as error:
        assert error.location.source == name
    else:
        assert topo.gpus == [] and topo.nets == []


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('<>/="\' systemcpugpci&;!?-\n0x1')), max_size=300))
def test_any_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        parse_nccl_xml(text)
    except ParseError as error:
        assert error.location.source == "<input>"


# --- property: switch membership and NIC locality survive the round trip ---------------


@st.composite
def switch_layouts(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """(cpu, GPUs, NICs) per switch."""
    return draw(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3), st.integers(0, 2)),
                         min_size=1, max_size=5))


def layout_xml(layout: list[tuple[int, int, int]]) -> str:
    cpus: dict[int, str] = {0: "", 1: ""}
    for index, (cpu, gpus, nics) in enumerate(layout):
        devices = "".join(pci_xml(gpu_xml(dev=str(index * 10 + g)),
                                  busid=f"0000:{index:02x}:{g:02x}.0") for g in range(gpus))
        devices += "".join(pci_xml(nic_xml(net_xml(name=f"n{index}_{n}", dev=str(index * 10 + n))),
                                   busid=f"0000:{index:02x}:{0x10 + n:02x}.0", cls="0x020700")
                           for n in range(nics))
        cpus[cpu] += pci_xml(devices, busid=f"0001:{index:02x}:00.0", cls="0x060400")
    return system_xml("".join(cpu_xml(body, numaid=str(c)) for c, body in cpus.items()))


@settings(max_examples=40, deadline=None)
@given(switch_layouts())
def test_layout_round_trip(layout: list[tuple[int, int, int]]) -> None:
    topo = parse_nccl_xml(layout_xml(layout))
    assert len(topo.gpus) == sum(g for _, g, _ in layout)
    assert len(topo.nets) == sum(n for _, _, n in layout)
    for gpu in topo.gpus:
        index = int(gpu.busid.split(":")[1], 16)
        cpu, _, nics = layout[index]
        assert topo.pcie_switch_of(gpu.busid) == f"0001:{index:02x}:00.0"
        same_cpu = [f"n{i}_{n}" for i, (c, _, k) in enumerate(layout) if c == cpu
                    for n in range(k)]
        everywhere = [net.name for net in topo.nets]
        expected = ([f"n{index}_{n}" for n in range(nics)] if nics
                    else same_cpu or everywhere)
        assert sorted(topo.nearest_nets(gpu.busid)) == sorted(expected)


# --- sniffing -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "hgx_h100_8gpu.xml", "a100_pcie_4gpu.xml", "cloud_virtual_bridges.xml",
    "nic_under_cpu.xml", "bad_attribute.xml", "truncated.xml"])
def test_fixtures_look_like_nccl_xml(name: str) -> None:
    assert looks_like_nccl_xml(read_capture(FIXTURES / name))


@pytest.mark.parametrize(("text", "expected"), [
    ("<system/>", True),
    ('\ufeff  <?xml version="1.0"?>\n<!-- c > d -->\n<system version="1">', True),
    ("<systems>", False),
    ("<!-- unterminated <system>", False),
    ('{"lldp": {}}', False),
    ("\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \tNV18\t0-55\n", False),
    ("", False),
])
def test_looks_like_nccl_xml(text: str, expected: bool) -> None:
    assert looks_like_nccl_xml(text) is expected
