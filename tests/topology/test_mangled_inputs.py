"""Mangled captures of every format (issue 11 item 13, issue 16): whatever is done to a
real capture, parsing succeeds or raises a toposched error naming where — never an
internal error (a 5,000-digit number once did)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.cli.main import run
from api.cli.topo import _parse_as
from topology.build import build_fabric
from topology.detect import detect_format
from topology.errors import ParseError, ToposchedError
from topology.inventory import load_inventory
from topology.source import read_capture

FIXTURES = Path(__file__).parents[1] / "fixtures"
_DIGITS = re.compile(r"\d+")


def _valid_fixtures() -> list[tuple[str, str]]:
    """(name, text) of every fixture that parses as its detected format."""
    found = []
    for path in sorted(FIXTURES.rglob("*")):
        if not path.is_file() or path.name.startswith(("README", "LICENSE", "NOTICE")):
            continue
        try:
            text = read_capture(path)
            _parse_as(detect_format(text, path.name), text, path.name)
        except ToposchedError:
            continue
        found.append((f"{path.parent.name}/{path.name}", text))
    return found


#: Outputs of the RDMA tools, written here in their documented shapes (the tools'
#: outputs are one line per port; no capture files for them ship in fixtures/).
_RDMA_SAMPLES = [
    ("rdma/ibdev2netdev", "mlx5_0 port 1 ==> ens1np0 (Up)\nmlx5_1 port 1 ==> ib0 (Down)\n"),
    ("rdma/rdma-link", "link mlx5_0/1 state ACTIVE physical_state LINK_UP netdev ens1np0\n"
                       "link mlx5_1/1 state DOWN physical_state DISABLED\n"),
    ("rdma/ibstat", "CA 'mlx5_0'\n\tCA type: MT4129\n\tNode GUID: 0x1c34da0300a1b2c3\n"
                    "\tPort 1:\n\t\tState: Active\n\t\tRate: 400\n"
                    "\t\tPort GUID: 0x1c34da0300a1b2c3\n\t\tLink layer: InfiniBand\n"),
    ("rdma/json", '{"rdma_devices": [{"device": "mlx5_0", "node_guid": "0x1c34da0300a1b2c3", '
                  '"ports": [{"port": 1, "netdev": "ens1np0", "rate_gbit": 400}]}]}\n'),
]
VALID = _valid_fixtures() + _RDMA_SAMPLES


def _mangle(text: str, data: st.DataObject) -> str:
    lines = text.splitlines(keepends=True) or [text]
    kind = data.draw(st.sampled_from(["digits", "drop", "repeat", "cut", "noise", "swap"]))
    at = data.draw(st.integers(0, max(len(lines) - 1, 0)))
    if kind == "digits":
        runs = list(_DIGITS.finditer(text))
        if not runs:
            return text
        run_ = runs[data.draw(st.integers(0, len(runs) - 1))]
        width = data.draw(st.sampled_from([19, 400, 5000]))
        return text[:run_.start()] + "9" * width + text[run_.end():]
    if kind == "drop":
        return "".join(lines[:at] + lines[at + 1:])
    if kind == "repeat":
        return "".join(lines[:at + 1] + lines[at:])
    if kind == "cut":
        return text[:data.draw(st.integers(0, len(text)))]
    if kind == "swap":
        other = data.draw(st.integers(0, len(lines) - 1))
        lines[at], lines[other] = lines[other], lines[at]
        return "".join(lines)
    noise = data.draw(st.text(min_size=1, max_size=12))
    return "".join(lines[:at]) + noise + "".join(lines[at:])


@pytest.mark.parametrize(("name", "text"), VALID, ids=[name for name, _ in VALID])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mangled_captures_parse_or_fail_cleanly(name: str, text: str,
                                                data: st.DataObject) -> None:
    mangled = _mangle(text, data)
    try:
        fmt = detect_format(mangled, name)
        _parse_as(fmt, mangled, name)
    except ToposchedError as exc:
        assert str(exc)


def test_a_5000_digit_xml_attribute_is_one_line_with_the_place(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (FIXTURES / "nccl" / "hgx_h100_8gpu.xml").read_text()
    path = tmp_path / "dump.xml"
    path.write_text(re.sub(r'speed="\d+"', f'speed="{"9" * 5000}"', text, count=1))
    assert run(["topo", "parse", str(path)]) == 2
    err = capsys.readouterr().err
    assert "5000-digit" in err and f"{path}:" in err and "internal error" not in err
    assert err.count("\n") == 1


def test_a_device_name_with_5000_digits_builds(tmp_path: Path) -> None:
    text = (FIXTURES / "nvsmi" / "dgx_h100_m.txt").read_text()
    capture = tmp_path / "h.txt"
    capture.write_text(text.replace("NIC7: mlx5_11", f"NIC7: mlx5_{'1' * 5000}"))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(f"""version: 1
zones: [{{name: z, pods: [{{name: p, racks: [{{name: r, hosts: [{{name: h, nvsmi: {capture}}}],
  rails: [l0, l1, l2, l3, l4, l5, l6, l7]}}]}}]}}]
""")
    spec = build_fabric(load_inventory(inventory))
    assert spec.host("h").nics[-1].leaf == "l7"


def test_the_cli_never_says_internal_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for index, (name, text) in enumerate(VALID):
        path = tmp_path / f"{index}.txt"
        path.write_text(_DIGITS.sub("9" * 5000, text, count=3))
        assert run(["topo", "parse", str(path)]) in (0, 2), name
        assert "internal error" not in capsys.readouterr().err, name


def test_mangling_is_not_a_no_op() -> None:
    with pytest.raises(ParseError):
        _parse_as("nccl-xml", "<system><cpu numaid='x'/></system>", "x")


@pytest.mark.parametrize("text", [
    "version: 1\ndefaults: {nic_gbit: %s}\nzones: [{name: z}]\n",
    "kind: NodeList\nitems:\n- metadata: {name: a}\n  status: {capacity: {nvidia.com/gpu: %s}}\n",
    '{"kind": "NodeList", "items": [{"metadata": {"name": "a"}, "status": '
    '{"capacity": {"nvidia.com/gpu": %s}}}]}',
    '{"lldp": [{"interface": [{"name": "eth0", "rid": %s}]}]}',
])
def test_huge_numbers_in_yaml_and_json_are_one_clean_line(
        text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "doc.txt"
    path.write_text(text % ("9" * 5000))
    assert run(["topo", "parse", str(path)]) in (0, 2)
    err = capsys.readouterr().err
    assert "internal error" not in err and "set_int_max_str_digits" not in err
