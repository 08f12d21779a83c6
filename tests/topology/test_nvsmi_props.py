"""Property tests: how a capture was pasted must not change what it parses to.

Each realistic capture is mangled the ways pastes mangle them (tabs become one or
more spaces, lines get indented or trailing spaces, CRLF endings, the legend is
hard-wrapped, cut or dropped) and must parse to the same topology.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.topology.test_nvsmi import AFFINITY_CASES, matrix_text
from topology.errors import WrongFormatError
from topology.nvsmi import parse_nvidia_smi

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvsmi"
REFUSED = {"p2p_read.txt": "a `topo -p2p` matrix",
           "nvlink_status.txt": "`nvidia-smi nvlink` output",
           "status_table.txt": "the `nvidia-smi` status table"}
MATRICES = sorted(p.name for p in FIXTURES.iterdir() if p.name not in REFUSED)
TAB_MODES = ("keep", "single", "runs", "expand", "mixed")
LEGEND_MODES = ("keep", "drop", "cut", "wrap")


@dataclass(frozen=True)
class Mangling:
    """One way of damaging a paste; ``seed`` drives the per-line and per-tab choices."""

    tabs: str
    indent: int
    trailing: bool
    crlf: bool
    legend: str
    cut: float
    width: int
    seed: int


manglings = st.builds(
    Mangling, tabs=st.sampled_from(TAB_MODES), indent=st.integers(0, 8), trailing=st.booleans(),
    crlf=st.booleans(), legend=st.sampled_from(LEGEND_MODES), cut=st.floats(0, 1),
    width=st.one_of(st.integers(4, 12), st.integers(13, 90)), seed=st.integers(0, 2**32 - 1))


def load(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


def legend_span(lines: list[str]) -> tuple[int, int, int] | None:
    """Where the legends are: ``Legend:``, then ``NIC Legend:``, then the next command."""
    start = next((k for k, line in enumerate(lines) if line.strip() == "Legend:"), None)
    if start is None:
        return None
    after = range(start + 1, len(lines))
    stop = next((k for k in after if "nvidia-smi" in lines[k]), len(lines))
    nic = next((k for k in after if lines[k].strip() == "NIC Legend:"), stop)
    return start, min(nic, stop), stop


def damage_legend(lines: list[str], how: Mangling) -> list[str]:
    """Drop or cut the code legend, or hard-wrap both legends at ``width``."""
    span = legend_span(lines)
    if span is None or how.legend == "keep":
        return lines
    start, codes_end, end = span
    if how.legend == "wrap":
        wrapped = [part for line in lines[start:end] for part in textwrap.wrap(
            line, how.width, break_long_words=False, break_on_hyphens=False) or [""]]
        return lines[:start] + wrapped + lines[end:]
    legend = lines[start:codes_end]
    if how.legend == "drop":
        legend = []
    else:
        text = "\n".join(legend)
        legend = text[: int(len(text) * how.cut)].split("\n")
    return lines[:start] + legend + lines[codes_end:]


def replace_tabs(line: str, how: Mangling, rng: random.Random) -> str:
    if how.tabs == "keep":
        return line
    if how.tabs == "expand":
        return line.expandtabs(8)
    if how.tabs == "single":
        return line.replace("\t", " ")
    keep = how.tabs == "mixed"
    return "".join(
        part if k == 0 else ("\t" if keep and rng.random() < 0.5 else " " * rng.randint(1, 8))
        + part for k, part in enumerate(line.split("\t")))


def mangle(text: str, how: Mangling) -> str:
    rng = random.Random(how.seed)
    lines = damage_legend(text.replace("\r\n", "\n").split("\n"), how)
    out = []
    for line in lines:
        line = " " * how.indent + replace_tabs(line, how, rng)
        out.append(line + " " * rng.randint(0, 3) if how.trailing else line)
    return ("\r\n" if how.crlf else "\n").join(out)


@pytest.mark.parametrize("name", MATRICES)
@settings(max_examples=50, deadline=None)
@given(how=manglings)
def test_mangled_capture_parses_the_same(name: str, how: Mangling) -> None:
    text = load(name)
    expected = parse_nvidia_smi(text, name).model_dump(exclude={"source"})
    got = parse_nvidia_smi(mangle(text, how), "mangled").model_dump(exclude={"source"})
    assert got == expected


@pytest.mark.parametrize("name", sorted(REFUSED))
@settings(max_examples=15, deadline=None)
@given(how=manglings)
def test_mangled_other_output_is_still_refused(name: str, how: Mangling) -> None:
    with pytest.raises(WrongFormatError) as info:
        parse_nvidia_smi(mangle(load(name), how), name)
    assert info.value.found == REFUSED[name]


@pytest.mark.parametrize(("fields", "expected"), AFFINITY_CASES)
@settings(max_examples=25, deadline=None)
@given(how=manglings)
def test_affinity_survives_any_tab_damage(fields: tuple[str, str, str],
                                          expected: tuple[object, object, object],
                                          how: Mangling) -> None:
    text = matrix_text(affinity={"GPU0": fields, "GPU1": fields})
    gpu = parse_nvidia_smi(mangle(text, how)).gpus[0]
    assert (gpu.cpu_affinity, gpu.numa_affinity, gpu.gpu_numa_id) == expected


def test_mangling_really_changes_the_text() -> None:
    text = load("dgx_h100_m.txt")
    how = Mangling(tabs="single", indent=2, trailing=True, crlf=True, legend="wrap", cut=0.5,
                   width=20, seed=1)
    mangled = mangle(text, how)
    assert "\t" not in mangled and "\r\n" in mangled
    assert "  GPU0  X  NV18" in mangled
    assert max(len(line) for line in mangled.split("\r\n")
               if "Connection" in line) < 40


def test_narrow_wrap_splits_the_nic_legend_pairs() -> None:
    text = load("dgx_h100_m.txt")
    mangled = mangle(text, Mangling(tabs="keep", indent=0, trailing=False, crlf=False,
                                    legend="wrap", cut=1.0, width=5, seed=0))
    lines = mangled.split("\n")
    assert "NIC1:" in lines and "mlx5_3" in lines and "NIC" in lines
    assert parse_nvidia_smi(mangled).nics[1].device == "mlx5_3"
