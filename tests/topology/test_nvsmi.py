"""Tests for the ``nvidia-smi topo -m`` parser (topology/nvsmi.py)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from topology.errors import NotFoundError, ParseError, ToposchedError, WrongFormatError
from topology.nvsmi import (
    LinkType,
    NvsmiTopology,
    SmiGpu,
    looks_like_nvidia_smi,
    parse_nvidia_smi,
    pcie_level,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvsmi"

#: The legend exactly as a current driver prints it, taken from a capture.
LEGEND = (FIXTURES / "workstation_pcie_m.txt").read_text().split("\n", 6)[6]
COLUMN_NAMES = {"cpu": "CPU Affinity", "numa": "NUMA Affinity", "gpu_numa": "GPU NUMA ID"}


def load(name: str) -> str:
    """Return a fixture's text exactly as stored (CRLF and escapes kept)."""
    return (FIXTURES / name).read_bytes().decode()


def parse_fixture(name: str) -> NvsmiTopology:
    return parse_nvidia_smi(load(name), name)


def default_cell(a: str, b: str) -> str:
    return "NV18" if a.startswith("GPU") and b.startswith("GPU") else "SYS"


def matrix_text(*, devices: Sequence[str] = ("GPU0", "GPU1", "NIC0"),
                cell: Callable[[str, str], str] = default_cell,
                kinds: Sequence[str] = ("cpu", "numa", "gpu_numa"),
                affinity: dict[str, Sequence[str]] | None = None,
                legend: str = LEGEND, nic_legend: dict[str, str] | None = None,
                before: str = "", ansi: bool = False) -> str:
    """Build a capture laid out as nvidia-smi prints it (tabs, ' X ', filler field)."""
    default = {"cpu": "0-7", "numa": "0", "gpu_numa": "N/A"}
    head = "\t" + "\t".join([*devices, *(COLUMN_NAMES[k] for k in kinds)])
    lines = [f"\x1b[4m{head}\x1b[0m" if ansi else head]
    for a in devices:
        cells = [" X " if a == b else cell(a, b) for b in devices]
        if a.startswith("GPU"):
            tail = list((affinity or {}).get(a, [default[k] for k in kinds]))
            if "gpu_numa" in kinds:
                tail.insert(len(tail) - 1, "")
        else:
            tail = [""] * len(kinds)
        lines.append("\t".join([a, *cells, *tail]))
    text = before + "\n".join(lines) + "\n" + legend
    if nic_legend:
        text += "\nNIC Legend:\n\n" + "".join(f"  {k}: {v}\n" for k, v in nic_legend.items())
    return text


def replace_line(text: str, prefix: str, new: str) -> str:
    """Replace the first line starting with ``prefix``."""
    lines = text.split("\n")
    index = next(k for k, line in enumerate(lines) if line.startswith(prefix))
    lines[index] = new
    return "\n".join(lines)


def single_spaces(text: str) -> str:
    return text.replace("\t", " ")


# --- realistic captures ---------------------------------------------------------------

def test_dgx_h100_devices_links_and_affinity() -> None:
    topo = parse_fixture("dgx_h100_m.txt")
    assert [g.name for g in topo.gpus] == [f"GPU{i}" for i in range(8)]
    assert [g.index for g in topo.gpus] == list(range(8))
    assert [n.name for n in topo.nics] == [f"NIC{i}" for i in range(8)]
    assert [n.device for n in topo.nics][:3] == ["mlx5_0", "mlx5_3", "mlx5_4"]
    assert topo.nics[7].device == "mlx5_11" and topo.nics[7].index == 7
    assert len(topo.links) == 16 * 15 // 2
    assert topo.link("GPU0", "GPU7").type is LinkType.NV
    assert topo.link("GPU0", "GPU7").nvlinks == 18
    assert topo.link("GPU0", "NIC0").type is LinkType.PIX
    assert topo.link("GPU0", "NIC1").type is LinkType.NODE
    assert topo.link("NIC4", "GPU0").type is LinkType.SYS
    assert topo.link("NIC0", "NIC4").type is LinkType.SYS
    assert topo.link("GPU0", "NIC0").nvlinks == 0
    assert topo.nics_nearest("GPU5") == ["NIC5"]
    gpu0, gpu4 = topo.gpus[0], topo.gpus[4]
    assert gpu0.cpu_affinity == "0-55,112-167"
    assert len(gpu0.cpus) == 112 and gpu0.cpus[55] == 55 and gpu0.cpus[56] == 112
    assert (gpu0.numa_affinity, gpu4.numa_affinity) == (0, 1)
    assert gpu0.gpu_numa_id is None
    assert gpu4.cpu_affinity == "56-111,168-223"
    assert topo.pcie_only is False
    assert topo.source == "dgx_h100_m.txt"


def test_links_are_one_per_pair_in_column_order() -> None:
    topo = parse_fixture("dgx_h100_m.txt")
    order = [g.name for g in topo.gpus] + [n.name for n in topo.nics]
    pairs = [(order.index(link.a), order.index(link.b)) for link in topo.links]
    assert all(i < j for i, j in pairs)
    assert len(set(pairs)) == len(pairs)
    assert pairs == sorted(pairs)


def test_a100_old_style_nic_columns_keep_their_unsorted_order() -> None:
    topo = parse_fixture("hgx_a100_oldstyle_m.txt")
    names = ["mlx5_2", "mlx5_3", "mlx5_0", "mlx5_1", "mlx5_6", "mlx5_7", "mlx5_4", "mlx5_5"]
    assert [n.name for n in topo.nics] == names
    assert [n.device for n in topo.nics] == names
    assert [n.index for n in topo.nics] == list(range(8))
    assert topo.link("GPU3", "GPU6").nvlinks == 12
    assert topo.link("GPU0", "mlx5_0").type is LinkType.PXB
    assert topo.link("mlx5_2", "mlx5_3").type is LinkType.PIX
    assert topo.nics_nearest("GPU0") == ["mlx5_0", "mlx5_1"]
    assert topo.nics_nearest("GPU7") == ["mlx5_6", "mlx5_7"]
    assert [g.numa_affinity for g in topo.gpus] == [3, 3, 1, 1, 7, 7, 5, 5]
    assert all(g.gpu_numa_id is None for g in topo.gpus)


def test_dgx1_hybrid_cube_mesh() -> None:
    topo = parse_fixture("dgx1_v100_m.txt")
    assert topo.link("GPU0", "GPU1").nvlinks == 1
    assert topo.link("GPU3", "GPU0").nvlinks == 2
    assert topo.link("GPU0", "GPU5").type is LinkType.SYS
    # Each V100 has six NVLinks, bonded to four peers.
    for gpu in topo.gpus:
        links = [link for link in topo.links if gpu.name in (link.a, link.b)]
        assert sum(link.nvlinks for link in links) == 6
        assert sum(1 for link in links if link.type is LinkType.NV) == 4
    assert topo.link("mlx5_0", "GPU2").type is LinkType.PHB
    assert topo.nics_nearest("GPU6") == ["mlx5_3"]
    assert topo.gpus[0].numa_affinity is None
    assert topo.gpus[7].cpu_affinity == "20-39,60-79"


def test_four_gpu_nv4_mesh() -> None:
    topo = parse_fixture("hgx_a100_4gpu_m.txt")
    gpu_pairs = [link for link in topo.links if link.b.startswith("GPU")]
    assert len(gpu_pairs) == 6
    assert {(link.type, link.nvlinks) for link in gpu_pairs} == {(LinkType.NV, 4)}
    assert topo.nics_nearest("GPU2") == ["NIC1"]
    assert topo.link("NIC0", "NIC1").type is LinkType.NODE


def test_mixed_islands_keep_nvlink_and_pcie_apart() -> None:
    topo = parse_fixture("mixed_islands_m.txt")
    assert topo.link("GPU0", "GPU3").nvlinks == 4
    assert topo.link("GPU4", "GPU5").nvlinks == 12
    assert topo.link("GPU6", "GPU7").nvlinks == 12
    assert topo.link("GPU5", "GPU6").type is LinkType.NODE
    assert topo.link("GPU3", "GPU4").type is LinkType.SYS
    islands: dict[str, set[str]] = {g.name: {g.name} for g in topo.gpus}
    for link in topo.links:
        if link.type is LinkType.NV:
            merged = islands[link.a] | islands[link.b]
            for name in merged:
                islands[name] = merged
    assert {frozenset(group) for group in islands.values()} == {
        frozenset({"GPU0", "GPU1", "GPU2", "GPU3"}), frozenset({"GPU4", "GPU5"}),
        frozenset({"GPU6", "GPU7"})}
    assert topo.nics_nearest("GPU1") == ["NIC0"]
    assert topo.nics_nearest("GPU6") == ["NIC1"]


def test_pcie_workstation_without_nics_and_with_empty_affinity() -> None:
    topo = parse_fixture("workstation_pcie_m.txt")
    assert topo.nics == ()
    assert len(topo.links) == 6
    assert topo.link("GPU0", "GPU1").type is LinkType.PHB
    assert topo.link("GPU2", "GPU1").type is LinkType.NODE
    assert topo.link("GPU0", "GPU3").type is LinkType.SYS
    assert topo.gpus[3] == SmiGpu(name="GPU3", index=3, cpu_affinity=None, cpus=(),
                                  numa_affinity=None, gpu_numa_id=None)
    assert topo.gpus[2].cpu_affinity == "0-15,32-47"
    assert topo.nics_nearest("GPU0") == []
    assert topo.pcie_only is False


def test_gb200_numa_lists_and_sys_to_every_nic() -> None:
    topo = parse_fixture("gb200_m.txt")
    assert len(topo.gpus) == 4 and len(topo.nics) == 6
    assert topo.gpus[0].numa_affinity == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert topo.gpus[3].numa_affinity == [1, *range(26, 34)]
    assert [g.gpu_numa_id for g in topo.gpus] == [2, 10, 18, 26]
    assert topo.gpus[2].cpus == tuple(range(72, 144))
    for gpu in topo.gpus:
        for nic in topo.nics:
            assert topo.link(gpu.name, nic.name).type is LinkType.SYS
    assert topo.nics_nearest("GPU1") == [n.name for n in topo.nics]
    assert topo.link("NIC4", "NIC5").type is LinkType.PIX
    assert topo.link("GPU0", "GPU3").nvlinks == 18


def test_old_driver_soc_and_cpu_affinity_only() -> None:
    topo = parse_fixture("old_driver_soc_m.txt")
    assert topo.link("GPU0", "GPU2").type is LinkType.SYS
    assert topo.link("GPU2", "GPU3").type is LinkType.PIX
    assert [n.name for n in topo.nics] == ["mlx4_0"]
    assert topo.nics[0].device == "mlx4_0"
    assert topo.nics_nearest("GPU3") == ["mlx4_0"]
    assert topo.gpus[0].cpu_affinity == "0-11,24-35"
    assert topo.gpus[0].numa_affinity is None and topo.gpus[0].gpu_numa_id is None
    assert topo.pcie_only is False


def test_raw_capture_with_ansi_and_crlf() -> None:
    raw = load("raw_ansi_crlf_m.txt")
    assert "\x1b[4m" in raw and "\r\n" in raw
    topo = parse_nvidia_smi(raw, "raw")
    clean = parse_nvidia_smi(raw.replace("\r", "").replace("\x1b[4m", "").replace("\x1b[0m", ""),
                             "raw")
    assert topo == clean
    assert topo.link("GPU0", "GPU1").nvlinks == 12
    assert [n.device for n in topo.nics] == ["mlx5_0", "mlx5_1"]
    assert topo.gpus[1].numa_affinity == 1


def test_mp_capture_is_pcie_only() -> None:
    topo = parse_fixture("dgx_h100_mp.txt")
    assert topo.pcie_only is True
    assert topo.link("GPU0", "GPU1").type is LinkType.NODE
    assert topo.link("GPU0", "GPU4").type is LinkType.SYS
    assert all(link.nvlinks == 0 for link in topo.links)
    assert topo.nics_nearest("GPU2") == ["NIC2"]


def test_mp_is_told_by_the_legend_when_the_command_is_missing() -> None:
    text = load("dgx_h100_mp.txt").split("\n", 1)[1]
    assert parse_nvidia_smi(text).pcie_only is True
    without_legend = text.split("\nLegend:")[0]
    assert parse_nvidia_smi(without_legend).pcie_only is False


def test_m_command_line_wins_over_a_legend_cut_before_nv() -> None:
    text = load("workstation_pcie_m.txt")
    cut = text[: text.index("  NV#")]
    assert parse_nvidia_smi(cut).pcie_only is False
    # Without the command line a legend cut before NV# proves nothing: still -m.
    assert parse_nvidia_smi(cut.split("\n", 1)[1]).pcie_only is False


def test_a_truncated_legend_does_not_flip_pcie_only() -> None:
    """Issue 11 item 13: every cut of a PCIe-only -m capture's legend still reads as -m
    (the workstation board has no NVLink, so only the legend could say -mp)."""
    text = load("workstation_pcie_m.txt").split("\n", 1)[1]  # without the command line
    start = text.index("Legend:")
    for end in range(start, len(text), 3):
        assert parse_nvidia_smi(text[:end]).pcie_only is False, end


def test_an_mp_legend_followed_by_the_nic_legend_is_evidence() -> None:
    text = load("dgx_h100_mp.txt").split("\n", 1)[1]  # no command line
    assert parse_nvidia_smi(text).pcie_only is True
    assert parse_nvidia_smi(text[: text.index("NIC Legend:")]).pcie_only is False


def test_m_followed_by_p2p_matrix_parses_the_m_matrix() -> None:
    topo = parse_fixture("m_then_p2p.txt")
    assert len(topo.gpus) == 4 and topo.nics == ()
    assert topo.link("GPU0", "GPU1").nvlinks == 4
    assert topo.link("GPU1", "GPU2").type is LinkType.NODE


def test_p2p_before_m_still_finds_the_m_matrix() -> None:
    text = load("p2p_read.txt") + "\n" + load("hgx_a100_4gpu_m.txt")
    assert parse_nvidia_smi(text) == parse_nvidia_smi(load("hgx_a100_4gpu_m.txt"))


def test_status_table_then_matrix_parses_the_matrix() -> None:
    text = load("status_table.txt") + "\n$ nvidia-smi topo -m\n" + load("mixed_islands_m.txt")
    assert parse_nvidia_smi(text) == parse_nvidia_smi(load("mixed_islands_m.txt"))


# --- other nvidia-smi outputs are refused ----------------------------------------------

@pytest.mark.parametrize(("name", "found", "line"), [
    ("p2p_read.txt", "a `topo -p2p` matrix", 1),
    ("nvlink_status.txt", "`nvidia-smi nvlink` output", 1),
    ("status_table.txt", "the `nvidia-smi` status table", 3),
])
def test_other_nvidia_smi_outputs_are_refused(name: str, found: str, line: int) -> None:
    with pytest.raises(WrongFormatError) as info:
        parse_fixture(name)
    assert info.value.found == found
    assert info.value.location.source == name and info.value.location.line == line
    assert "`nvidia-smi topo -m`" in str(info.value)


def test_single_gpu_p2p_matrix_is_refused_by_its_legend() -> None:
    text = " \tGPU0\t\n GPU0\tX\t\n\nLegend:\n\n  X    = Self\n  OK   = Status Ok\n"
    with pytest.raises(WrongFormatError, match="p2p"):
        parse_nvidia_smi(text)


def test_nvlink_capabilities_output_is_refused() -> None:
    text = "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)\n\t Link 0, P2P is supported: true\n"
    with pytest.raises(WrongFormatError, match="nvlink"):
        parse_nvidia_smi(text)


def test_gpu_list_output_is_refused() -> None:
    with pytest.raises(WrongFormatError, match="-L"):
        parse_nvidia_smi("GPU 0: NVIDIA L4 (UUID: GPU-0b1c)\nGPU 1: NVIDIA L4 (UUID: GPU-77ad)\n")


def test_query_report_is_refused() -> None:
    text = ("\n==============NVSMI LOG==============\n\nTimestamp : Tue Mar 11 2025\n"
            "Driver Version : 550.127.05\nAttached GPUs : 1\nGPU 00000000:4A:00.0\n")
    with pytest.raises(WrongFormatError, match="-q") as info:
        parse_nvidia_smi(text)
    assert info.value.location.line == 2


# --- quirks --------------------------------------------------------------------------

def test_ansi_header_and_carriage_returns() -> None:
    plain = parse_nvidia_smi(matrix_text())
    raw = matrix_text(ansi=True).replace("\n", "\r\n")
    assert parse_nvidia_smi(raw) == plain


def test_tabs_as_single_spaces_runs_of_spaces_and_indent() -> None:
    text = matrix_text(nic_legend={"NIC0": "mlx5_4"})
    plain = parse_nvidia_smi(text)
    assert plain.nics[0].device == "mlx5_4"
    assert parse_nvidia_smi(single_spaces(text)) == plain
    assert parse_nvidia_smi(text.expandtabs(8)) == plain
    indented = "\n".join("    " + line for line in text.split("\n"))
    assert parse_nvidia_smi(indented) == plain


def test_non_breaking_spaces_from_a_web_paste() -> None:
    text = matrix_text()
    assert parse_nvidia_smi(text.replace("\t", "\u00a0\u00a0")) == parse_nvidia_smi(text)


def test_gpu_rows_carry_a_filler_field_and_nic_rows_end_empty() -> None:
    text = matrix_text()
    gpu_row = next(line for line in text.split("\n") if line.startswith("GPU0"))
    nic_row = next(line for line in text.split("\n") if line.startswith("NIC0"))
    assert gpu_row.endswith("0-7\t0\t\tN/A") and nic_row.endswith("\t\t\t")
    gpu = parse_nvidia_smi(text).gpus[0]
    assert (gpu.cpu_affinity, gpu.numa_affinity, gpu.gpu_numa_id) == ("0-7", 0, None)


AFFINITY_CASES = [
    (("0-47,96-143", "0", "N/A"), ("0-47,96-143", 0, None)),
    (("", "N/A", "N/A"), (None, None, None)),
    (("", "", "N/A"), (None, None, None)),
    (("0-7", "", "N/A"), ("0-7", None, None)),
    (("0-7", "N/A", "N/A"), ("0-7", None, None)),
    (("", "1", "N/A"), (None, 1, None)),
    (("N/A", "N/A", "N/A"), (None, None, None)),
    (("0-71", "0,3-9,11-17", "3"), ("0-71", [0, *range(3, 10), *range(11, 18)], 3)),
    (("72-143", "1", "10"), ("72-143", 1, 10)),
    (("4", "0", "N/A"), ("4", 0, None)),
]


@pytest.mark.parametrize(("fields", "expected"), AFFINITY_CASES)
def test_affinity_fields_with_tabs_and_with_collapsed_empties(
        fields: tuple[str, str, str], expected: tuple[object, object, object]) -> None:
    text = matrix_text(affinity={"GPU0": fields, "GPU1": fields})
    for variant in (text, single_spaces(text), text.expandtabs(4)):
        gpu = parse_nvidia_smi(variant).gpus[1]
        assert (gpu.cpu_affinity, gpu.numa_affinity, gpu.gpu_numa_id) == expected


@pytest.mark.parametrize(("kinds", "fields", "expected"), [
    (("cpu", "numa"), ("0-15", "0"), ("0-15", 0)),
    (("cpu", "numa"), ("", "N/A"), (None, None)),
    (("cpu", "numa"), ("0-15", ""), ("0-15", None)),
    (("cpu", "numa"), ("", "1"), (None, 1)),
    (("cpu",), ("0-11,24-35",), ("0-11,24-35", None)),
    (("cpu",), ("",), (None, None)),
])
def test_affinity_on_older_headers(kinds: tuple[str, ...], fields: tuple[str, ...],
                                   expected: tuple[object, object]) -> None:
    text = matrix_text(kinds=kinds, affinity={"GPU0": fields, "GPU1": fields})
    for variant in (text, single_spaces(text)):
        gpu = parse_nvidia_smi(variant).gpus[0]
        assert (gpu.cpu_affinity, gpu.numa_affinity) == expected
        assert gpu.gpu_numa_id is None


def test_exact_tab_layout_resolves_what_shapes_cannot() -> None:
    text = matrix_text(affinity={"GPU0": ("4", "", "N/A")})
    gpu = parse_nvidia_smi(text).gpus[0]
    assert (gpu.cpu_affinity, gpu.numa_affinity) == ("4", None)
    # Without tabs a lone number reads as the NUMA node: the likelier meaning.
    gpu = parse_nvidia_smi(single_spaces(text)).gpus[0]
    assert (gpu.cpu_affinity, gpu.numa_affinity) == (None, 4)


def test_row_that_lost_one_tab_is_read_by_shapes_not_shifted() -> None:
    text = matrix_text(affinity={"GPU0": ("", "1", "N/A")})
    damaged = text.replace("SYS\t\t1\t", "SYS   \t1\t", 1)
    assert damaged != text
    gpu = parse_nvidia_smi(damaged).gpus[0]
    assert (gpu.cpu_affinity, gpu.numa_affinity, gpu.gpu_numa_id) == (None, 1, None)


def test_header_without_affinity_columns() -> None:
    topo = parse_nvidia_smi(matrix_text(kinds=()))
    assert topo.gpus[0].cpu_affinity is None and topo.gpus[0].cpus == ()


def test_cpus_are_expanded_sorted_and_unique() -> None:
    text = matrix_text(affinity={"GPU0": ("8-9,0-1,1", "0", "N/A")})
    assert parse_nvidia_smi(text).gpus[0].cpus == (0, 1, 8, 9)


def test_missing_or_wrapped_nic_legend() -> None:
    no_legend = parse_nvidia_smi(matrix_text())
    assert no_legend.nics[0].device == "NIC0"
    wrapped = matrix_text(nic_legend={"NIC0": "mlx5_7"}).replace("NIC0: mlx5_7", "NIC0:\nmlx5_7")
    assert parse_nvidia_smi(wrapped).nics[0].device == "mlx5_7"
    glued = matrix_text(nic_legend={"NIC0": "mlx5_7"}).replace("NIC0: mlx5_7", "NIC0:mlx5_7")
    assert parse_nvidia_smi(glued).nics[0].device == "mlx5_7"


def test_nic_legend_of_a_later_output_is_not_borrowed() -> None:
    first = matrix_text()
    second = matrix_text(nic_legend={"NIC0": "mlx5_9"})
    assert parse_nvidia_smi(first + "\n" + second).nics[0].device == "NIC0"


def test_legend_missing_or_truncated_mid_line() -> None:
    text = matrix_text()
    plain = parse_nvidia_smi(text)
    assert parse_nvidia_smi(text.split("\nLegend:")[0]) == plain
    assert parse_nvidia_smi(text[: text.index("QPI/UPI") - 10]) == plain


def test_single_gpu_machine() -> None:
    topo = parse_nvidia_smi(matrix_text(devices=("GPU0",)))
    assert [g.name for g in topo.gpus] == ["GPU0"] and topo.links == ()


def test_rows_in_another_order_are_accepted() -> None:
    text = matrix_text()
    lines = text.split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    assert parse_nvidia_smi("\n".join(lines)) == parse_nvidia_smi(text)


def test_prose_and_prompts_around_the_matrix() -> None:
    text = ("Here is my topology, NCCL hangs on GPU0:\n```\n$ nvidia-smi topo -m\n"
            + matrix_text() + "```\nThanks!\n")
    assert parse_nvidia_smi(text) == parse_nvidia_smi(matrix_text())


def test_soc_and_sys_are_the_same_link_both_ways() -> None:
    def cell(a: str, b: str) -> str:
        return "SOC" if a == "GPU0" else "SYS"

    topo = parse_nvidia_smi(matrix_text(devices=("GPU0", "GPU1"), cell=cell))
    assert topo.link("GPU0", "GPU1").type is LinkType.SYS


# --- errors --------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n\t\n"])
def test_empty_input(text: str) -> None:
    with pytest.raises(ParseError, match="empty") as info:
        parse_nvidia_smi(text, "cap.txt")
    assert info.value.location.source == "cap.txt"


def test_unknown_link_code_names_line_column_and_code() -> None:
    text = replace_line(matrix_text(), "GPU1", "GPU1\tNVX\t X \tSYS\t0-7\t0\t\tN/A")
    with pytest.raises(ParseError) as info:
        parse_nvidia_smi(text, "cap.txt")
    err = info.value
    assert err.location.line == 3 and err.location.source == "cap.txt"
    assert "'NVX'" in err.message and "column GPU0" in err.message
    assert err.expected is not None and "PIX" in err.expected and "NV#" in err.expected
    assert str(err).startswith("cap.txt:3:")


def test_ragged_row_with_too_few_cells() -> None:
    text = replace_line(matrix_text(), "GPU1", "GPU1\tNV18\t X \t0-7\t0\t\tN/A")
    with pytest.raises(ParseError, match="row GPU1 has 2 cells, expected 3") as info:
        parse_nvidia_smi(text)
    assert info.value.location.line == 3


def test_ragged_row_cut_short() -> None:
    text = replace_line(matrix_text(), "NIC0", "NIC0\tSYS")
    with pytest.raises(ParseError, match="row NIC0 has 1 cells, expected 3"):
        parse_nvidia_smi(text)


def test_row_with_too_many_cells() -> None:
    text = replace_line(matrix_text(), "GPU1", "GPU1\tNV18\t X \tSYS\tSYS\t0-7\t0\t\tN/A")
    with pytest.raises(ParseError, match="row GPU1 has 4 cells, expected 3"):
        parse_nvidia_smi(text)


def test_header_with_no_gpu_columns() -> None:
    text = "\tNIC0\tNIC1\tCPU Affinity\nNIC0\t X \tPIX\t\nNIC1\tPIX\t X \t\n"
    with pytest.raises(ParseError, match="no GPU columns") as info:
        parse_nvidia_smi(text)
    assert info.value.location.line == 1


def test_asymmetric_matrix_is_reported() -> None:
    text = replace_line(matrix_text(), "NIC0", "NIC0\tPIX\tSYS\t X \t\t\t")
    with pytest.raises(ParseError, match="not symmetric") as info:
        parse_nvidia_smi(text)
    assert "GPU0→NIC0 is SYS" in info.value.message and "NIC0→GPU0 is PIX" in info.value.message
    assert info.value.location.line == 4


def test_row_name_that_is_not_a_column() -> None:
    text = replace_line(matrix_text(), "NIC0", "mlx5_0\tSYS\tSYS\t X \t\t\t")
    with pytest.raises(ParseError, match="'mlx5_0' where the row for NIC0") as info:
        parse_nvidia_smi(text)
    assert info.value.location.line == 4


def test_truncated_matrix_is_reported() -> None:
    text = matrix_text().split("\nNIC0")[0]
    with pytest.raises(ParseError, match="no row for NIC0"):
        parse_nvidia_smi(text)


def test_duplicate_row() -> None:
    text = replace_line(matrix_text(), "NIC0", "GPU1\tNV18\t X \tSYS\t0-7\t0\t\tN/A")
    with pytest.raises(ParseError, match="GPU1 appears twice"):
        parse_nvidia_smi(text)


def test_duplicate_column() -> None:
    with pytest.raises(ParseError, match="appears twice in the header"):
        parse_nvidia_smi("\tGPU0\tGPU0\nGPU0\t X \tNV4\nGPU0\tNV4\t X \n")


def test_x_off_the_diagonal_and_code_on_it() -> None:
    off = replace_line(matrix_text(), "GPU1", "GPU1\t X \t X \tSYS\t0-7\t0\t\tN/A")
    with pytest.raises(ParseError, match="X off the diagonal"):
        parse_nvidia_smi(off)
    on = replace_line(matrix_text(), "GPU1", "GPU1\tNV18\tNV18\tSYS\t0-7\t0\t\tN/A")
    with pytest.raises(ParseError, match="diagonal cell of row GPU1"):
        parse_nvidia_smi(on)


def test_nvlink_to_a_nic_is_refused() -> None:
    with pytest.raises(ParseError, match="only GPUs have NVLinks"):
        parse_nvidia_smi(matrix_text(cell=lambda a, b: "NV18"))


def test_unexpected_header_text() -> None:
    text = matrix_text().replace("GPU NUMA ID", "GPU Temp")
    with pytest.raises(ParseError, match="unexpected header text") as info:
        parse_nvidia_smi(text)
    assert info.value.location.line == 1


def test_unreadable_affinity() -> None:
    text = matrix_text(affinity={"GPU1": ("cores0-7", "0", "N/A")})
    with pytest.raises(ParseError, match="affinity of row GPU1") as info:
        parse_nvidia_smi(single_spaces(text))
    assert info.value.location.line == 3


def test_too_many_affinity_fields() -> None:
    text = replace_line(matrix_text(), "GPU0", "GPU0\t X \tNV18\tSYS\t0-7\t0\t1\t2\tN/A")
    with pytest.raises(ParseError, match="5 field"):
        parse_nvidia_smi(text)


def test_nic_row_with_trailing_values() -> None:
    text = replace_line(matrix_text(), "NIC0", "NIC0\tSYS\tSYS\t X \t0-7")
    with pytest.raises(ParseError, match="NIC row NIC0 has 1 field"):
        parse_nvidia_smi(text)


@pytest.mark.parametrize("cpus", ["0-99999999", "7-0"])
def test_bad_cpu_ranges_are_refused_without_expanding(cpus: str) -> None:
    text = matrix_text(affinity={"GPU0": (cpus, "0", "N/A")})
    with pytest.raises(ParseError, match="CPU affinity"):
        parse_nvidia_smi(text)


def test_no_matrix_at_all() -> None:
    with pytest.raises(ParseError, match="no `nvidia-smi topo -m` matrix") as info:
        parse_nvidia_smi("hello\nworld\n", "notes.txt")
    assert not isinstance(info.value, WrongFormatError)
    assert info.value.expected is not None and "GPU0" in info.value.expected


def test_no_devices_found() -> None:
    with pytest.raises(ParseError, match="no GPUs"):
        parse_nvidia_smi("$ nvidia-smi topo -m\nNo devices were found\n")


# --- model API -----------------------------------------------------------------------

def test_link_is_order_insensitive_and_names_unknowns() -> None:
    topo = parse_fixture("hgx_a100_4gpu_m.txt")
    assert topo.link("NIC1", "GPU3") == topo.link("GPU3", "NIC1")
    with pytest.raises(NotFoundError, match="GPU9"):
        topo.link("GPU0", "GPU9")
    with pytest.raises(NotFoundError):
        topo.link("GPU0", "GPU0")
    with pytest.raises(NotFoundError, match="GPU"):
        topo.nics_nearest("NIC0")


def test_pcie_levels_follow_nvml() -> None:
    order = [LinkType.PIX, LinkType.PXB, LinkType.PHB, LinkType.NODE, LinkType.SYS]
    assert [pcie_level(t) for t in order] == [10, 20, 30, 40, 50]
    assert pcie_level(LinkType.NV) < pcie_level(LinkType.PIX)


def test_json_wire_contract_round_trips() -> None:
    topo = parse_fixture("gb200_m.txt")
    data = topo.model_dump(mode="json")
    assert set(data) == {"source", "pcie_only", "gpus", "nics", "links"}
    assert set(data["gpus"][0]) == {"name", "index", "cpu_affinity", "cpus", "numa_affinity",
                                    "gpu_numa_id"}
    assert data["links"][0] == {"a": "GPU0", "b": "GPU1", "type": "NV", "nvlinks": 18}
    assert data["nics"][0] == {"name": "NIC0", "device": "mlx5_0", "index": 0}
    again = NvsmiTopology.model_validate(data)
    assert again == topo
    assert again.link("NIC5", "GPU2").type is LinkType.SYS


def test_models_are_frozen() -> None:
    topo = parse_fixture("hgx_a100_4gpu_m.txt")
    with pytest.raises(ValueError, match="frozen"):
        topo.gpus[0].name = "GPU9"  # type: ignore[misc]


# --- sniffing --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir()))
def test_sniff_recognises_every_capture(name: str) -> None:
    assert looks_like_nvidia_smi(load(name))


@pytest.mark.parametrize("text", [
    '{"lldp": {"interface": []}}',
    "<system version=\"1\"><cpu numaid=\"0\"/></system>",
    "cluster: a\nhosts:\n  - name: gpu-01\n    gpus: 8\n",
    "GPU0 is the first one in my notes\n",
    "",
])
def test_sniff_rejects_other_text(text: str) -> None:
    assert not looks_like_nvidia_smi(text)


# --- bounded time on garbage ----------------------------------------------------------

@functools.cache
def garbage_inputs() -> dict[str, str]:
    rng = random.Random(7)
    alphabet = "GPU0123456789 \t\nXNVSYPIXHBCOD-,/A:=\x1b[m"
    size = 2 * 1024 * 1024
    return {
        "random": "".join(rng.choices(alphabet, k=size)),
        "headers": "\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \n" * (size // 36),
        "one long header": "GPU0 " + " ".join(f"NIC{k}" for k in range(size // 8)) + "\nGPU0 X\n",
        "overlapping cpulist": matrix_text(affinity={"GPU0": (",".join(["0-65535"] * 8000),
                                                               "0", "N/A")}),
        "long line": "GPU0 GPU1\nGPU0 " + "0," * (size // 2) + "\n",
        "escapes": "\x1b[" + "0;" * (size // 2) + "\n",
        "p2p headers": " GPU0 GPU1\n GPU0 X OK\n" * (size // 24),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(garbage_inputs()))
def test_garbage_is_refused_in_bounded_time(kind: str) -> None:
    text = garbage_inputs()[kind]
    with pytest.raises(ToposchedError):
        parse_nvidia_smi(text, kind)
    looks_like_nvidia_smi(text)
