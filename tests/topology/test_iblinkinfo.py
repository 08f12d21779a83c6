"""``iblinkinfo`` as a subnet input (issue 16): real public outputs parsed into the
ibnetdiscover link model, down ports reported, far ends resolved by LID or kept by LID,
the ``-l`` form; errors name the line; a fabric built through the CLI and the service from
iblinkinfo alone agrees with one built from ibnetdiscover."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from api.cli.main import run
from tests.api.service_builders import WORKER, bearer, make_app
from topology.errors import ParseError
from topology.ib_fabric import analyse
from topology.iblinkinfo import (
    IbLinkInfo,
    looks_like_iblinkinfo,
    parse_iblinkinfo,
    parse_subnet_capture,
)
from topology.ibnetdiscover import IbFabric, parse_ibnetdiscover
from topology.writers import iblinkinfo_text

FIXTURES = Path(__file__).parents[1] / "fixtures"
LINKINFO = FIXTURES / "iblinkinfo"
DGX = FIXTURES / "ibnetdiscover" / "topograph_dgx_h100.out"
NVSMI = FIXTURES / "nvsmi" / "dgx_h100_m.txt"
DGX_HOSTS = [f"a06-p1-dgx-02-c{i:02d}" for i in range(1, 6)]


def _parse(name: str) -> IbLinkInfo:
    return parse_iblinkinfo((LINKINFO / name).read_text(), name)


def _cables(fabric: IbFabric) -> set[tuple[str, int, str, int, float | None]]:
    return {(link.a, link.a_port, link.b, link.b_port, link.gbit) for link in fabric.links}


def test_a_switch_block_and_ca_blocks_resolve_by_lid_and_keep_down_ports() -> None:
    fabric = _parse("madsys_qdr_dual_port.txt")
    assert fabric.format == "classic"
    assert Counter(n.kind for n in fabric.nodes) == {"switch": 1, "ca": 8}
    switch = fabric.by_guid()["0x0002c902004b2678"]
    assert (switch.description, switch.lid) == ("Infiniscale-IV Mellanox Technologies", 2)
    # each cable is printed from both ends and kept once; teaker-9's HCA has two ports
    assert len(fabric.links) == 9 and {link.gbit for link in fabric.links} == {40.0}
    teaker9 = [(link.b_port, link.a_port) for link in fabric.links
               if link.b == "0xf45214030091ba51"]
    assert sorted(teaker9) == [(1, 3), (2, 14)]
    down = fabric.down_ports
    assert {(p.node, p.state, p.phys_state) for p in down} == {
        ("0x0002c902004b2678", "Down", "Polling")}
    assert sorted(p.port for p in down) == [8, 10, 11, 12, 13, 15, 16, 17, 18]


def test_a_far_end_never_printed_is_kept_by_its_lid() -> None:
    fabric = _parse("lenovo_edr_sb7700.txt")
    n01 = next(n for n in fabric.nodes if n.description == "n01 HCA-1")
    assert (n01.kind, n01.guid, n01.lid) == ("ca", "lid:1@lenovo_edr_sb7700.txt", 1)
    assert ("0x506b4b0300820910", 18, n01.guid, 1, 100.0) in _cables(fabric)
    assert len(fabric.down_ports) == 16


def test_a_partial_switch_scan_tells_switches_from_cas_by_port_and_name() -> None:
    fabric = _parse("quantum_hdr_switch_scan.txt")
    kinds = {n.description: n.kind for n in fabric.nodes}
    assert kinds["MF0;d32-03-1:MQM8700/U1"] == "switch"  # far port 40, managed name
    assert kinds["node3 HCA-2"] == kinds["Mellanox Technologies Aggregation Node"] == "ca"
    # "( Could be 53.125 Gbps)" after an HCA is advice, not its rate
    assert Counter(link.speed for link in fabric.links) == {"EDR": 4, "HDR": 2}
    topology = analyse([fabric])
    assert topology.level[fabric.nodes[0].guid] == 1
    assert topology.switch_name["lid:4@quantum_hdr_switch_scan.txt"] == "d32-03-1"


@pytest.mark.parametrize(("name", "switch", "cas"), [
    ("switchib_line.txt", "0xec0d9a030002b810", 3),
    ("ibsim_switches_only_line.txt", "0x0000000000200002", 2),
])
def test_the_line_form_names_both_ends_by_guid(name: str, switch: str, cas: int) -> None:
    fabric = _parse(name)
    assert fabric.format == "line"
    kinds = Counter(n.kind for n in fabric.nodes)
    assert kinds == {"switch": 1, "ca": cas} and fabric.by_guid()[switch].kind == "switch"
    assert all(switch in (link.a, link.b) for link in fabric.links)
    assert not any(n.description.startswith(" ") for n in fabric.nodes)


@pytest.mark.parametrize("line", [False, True])
def test_the_real_dgx_subnet_round_trips_through_iblinkinfo(line: bool) -> None:
    """The 622-node capture printed as iblinkinfo reads back to the same cables, and
    the same leaves, spines, pods, uplinks and HCA attachments."""
    original = parse_ibnetdiscover(DGX.read_text(), "dgx")
    text = iblinkinfo_text(original, line=line)
    assert looks_like_iblinkinfo(text)
    again = parse_subnet_capture(text, "dgx")
    assert again.format == ("line" if line else "classic") and _cables(again) == _cables(original)
    a, b = analyse([original]), analyse([again])
    assert (a.switch_name, a.level, a.pod_of_leaf, a.leaf_uplink_gbit, a.attachments) == (
        b.switch_name, b.level, b.pod_of_leaf, b.leaf_uplink_gbit, b.attachments)


@pytest.mark.parametrize(("text", "message", "line"), [
    ("Switch: nonsense:\n", "cannot read this node header", 1),
    ("CA: h mlx5_0:\n      0xab 1 1[  ] ==( 4X 2.5 Gbps Active/ LinkUp)==> junk\n",
     "cannot read the far end of this port line", 2),
    ('x\n           2    1[  ] ==( 4X 2.5 Gbps Active/  LinkUp)==>  3  1[  ] "h" ( )\n',
     "a switch port line outside a Switch: block", 2),
    ("Switch: 0x1 s:\n  2 1[ ] ==( Active LinkUp ==>\n", "cannot read this port line", 2),
    ("Switch: 0x1 s:\n  two 1[ ] ==(  Down/ Polling)==>  [ ] \"\" ( )\n",
     "cannot read where this port line starts", 2),
    ("nothing to see\n", "no iblinkinfo port line found", None),
])
def test_errors_name_the_file_and_line(text: str, message: str, line: int | None) -> None:
    with pytest.raises(ParseError) as caught:
        parse_iblinkinfo(text, "links.txt")
    where = f"links.txt:{line}: " if line else "links.txt: "
    assert str(caught.value).startswith(where + message) and "\n" not in str(caught.value)


# -- properties ------------------------------------------------------------------------------

_CLASSIC = [p for p in sorted(LINKINFO.glob("*.txt")) if "line" not in p.name]


def _blocks(text: str) -> list[list[str]]:
    """A classic capture's node blocks (header and its port lines)."""
    blocks: list[list[str]] = []
    for raw in text.splitlines():
        if raw.startswith(("Switch:", "CA:", "Router:")):
            blocks.append([raw])
        elif blocks and "==(" in raw:
            blocks[-1].append(raw)
    return blocks


@pytest.mark.parametrize("path", _CLASSIC, ids=[p.name for p in _CLASSIC])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_node_order_does_not_change_the_cables(path: Path, seed: int) -> None:
    """iblinkinfo prints nodes in discovery order; LID resolution must not depend on it."""
    blocks = _blocks(path.read_text())
    random.Random(seed).shuffle(blocks)
    shuffled = "\n".join(line for block in blocks for line in block) + "\n"
    assert _cables(parse_iblinkinfo(shuffled, path.name)) == _cables(
        parse_iblinkinfo(path.read_text(), path.name))


_MUTATIONS = ["==(", ")==>", "[  ]", '"', "Gbps", "/", ":", "0x", "Switch: ", "CA: "]


@pytest.mark.parametrize("path", sorted(LINKINFO.glob("*.txt")),
                         ids=[p.name for p in sorted(LINKINFO.glob("*.txt"))])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_mangled_lines_parse_or_fail_on_their_line(path: Path, data: st.DataObject) -> None:
    """Cut, duplicated or injected iblinkinfo tokens: a fabric whose links join known
    nodes, or one ParseError naming the file and a line of the text."""
    lines = path.read_text().splitlines()
    at = data.draw(st.integers(0, len(lines) - 1))
    token = data.draw(st.sampled_from(_MUTATIONS))
    how = data.draw(st.sampled_from(["drop", "insert", "double"]))
    if how == "drop":
        lines[at] = lines[at].replace(token, "", 1)
    elif how == "insert":
        cut = data.draw(st.integers(0, len(lines[at])))
        lines[at] = lines[at][:cut] + token + lines[at][cut:]
    else:
        lines[at] = lines[at].replace(token, token * 2, 1)
    try:
        fabric = parse_iblinkinfo("\n".join(lines) + "\n", "cap.txt")
    except ParseError as exc:
        text = str(exc)
        assert text.startswith("cap.txt") and "\n" not in text
        number = exc.location.line
        assert number is None or 1 <= number <= len(lines)
        return
    known = fabric.by_guid()
    assert all(link.a in known and link.b in known for link in fabric.links)


# -- through the CLI and the service -------------------------------------------------------

def test_topo_parse_detects_both_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["topo", "parse", str(LINKINFO / "madsys_qdr_dual_port.txt")]) == 0
    assert capsys.readouterr().out.strip() == "iblinkinfo: 9 nodes, 9 links, 9 down_ports"
    assert run(["topo", "parse", str(LINKINFO / "switchib_line.txt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["format"], result["variant"]) == ("iblinkinfo", "line")


def test_a_broken_capture_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "links.txt"
    text = (LINKINFO / "lenovo_edr_sb7700.txt").read_text().replace("4    1[  ] ==(",
                                                                     "4    1[  ] ==( 9X", 1)
    path.write_text(text.replace('2   17[  ] "MF0;', '2   17[  "MF0;', 1))
    assert run(["topo", "parse", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:7: cannot read the far end" in err and err.count("\n") == 1


def _build(tmp_path: Path, flag: str, subnet: Path, hosts: list[str],
           capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, object], Path]:
    out = tmp_path / f"{subnet.stem}.{flag}.json"
    args = ["topo", "build", f"--{flag}", str(subnet), "-o", str(out), "--json"]
    for host in hosts:
        args += ["--nvsmi", f"{host}={NVSMI}"]
    assert run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert isinstance(summary, dict)
    return summary, out


def _placed(fabric: Path) -> dict[tuple[str, str], tuple[str, str]]:
    spec = json.loads(fabric.read_text())
    return {(h["name"], n["device"]): (n["leaf"], n["port"]) for h in spec["hosts"]
            for n in h["nics"] if n["leaf"] and not n["leaf"].startswith("uplink-unknown")}


def test_a_real_capture_builds_a_fabric_with_nvidia_smi_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hosts = [f"teaker-{i}" for i in range(4, 12)]
    summary, out = _build(tmp_path, "iblinkinfo", LINKINFO / "madsys_qdr_dual_port.txt",
                          hosts, capsys)
    assert summary["hosts"] == len(hosts)
    placed = _placed(out)
    assert placed[("teaker-4", "mlx5_0")] == ("S-0002c902004b2678", "9")
    assert placed[("teaker-9", "mlx5_0")] == ("S-0002c902004b2678", "3")
    assert run(["topo", "distance", str(out), "teaker-4/gpu0", "teaker-5/gpu0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tier"] == "same_leaf"


def test_a_host_the_capture_knows_only_by_lid_is_matched_by_description(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = _build(tmp_path, "iblinkinfo", LINKINFO / "lenovo_edr_sb7700.txt",
                    ["n01", "n02"], capsys)
    assert _placed(out) == {("n01", "mlx5_0"): ("SB7700", "18"),
                            ("n02", "mlx5_0"): ("SB7700", "17")}


@pytest.mark.parametrize("line", [False, True])
def test_iblinkinfo_builds_the_fabric_ibnetdiscover_builds(
        line: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subnet = tmp_path / "links.txt"
    subnet.write_text(iblinkinfo_text(parse_ibnetdiscover(DGX.read_text(), "x"), line=line))
    ib_summary, ib_out = _build(tmp_path, "ibnetdiscover", DGX, DGX_HOSTS, capsys)
    li_summary, li_out = _build(tmp_path, "iblinkinfo", subnet, DGX_HOSTS, capsys)
    assert _placed(li_out) == _placed(ib_out) and len(_placed(ib_out)) == 12
    assert li_summary["rail_optimised"] and li_summary["leaves"] == ib_summary["leaves"]


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


def test_the_service_takes_iblinkinfo_as_a_subnet_feed(client: TestClient) -> None:
    for host in ("teaker-4", "teaker-5"):
        answer = client.put(f"/v1/topology/hosts/{host}/nvidia-smi", content=NVSMI.read_text(),
                            headers=bearer())
        assert answer.status_code == 200
    answer = client.put("/v1/topology/ibnetdiscover/qdr",
                        content=(LINKINFO / "madsys_qdr_dual_port.txt").read_text(),
                        headers=bearer())
    assert answer.status_code == 200, answer.text
    distance = client.get("/v1/topology/distance", headers=bearer(WORKER),
                          params={"a": "teaker-4/gpu0", "b": "teaker-5/gpu0"})
    assert distance.json()["tier"] == "same_leaf"
    broken = client.put("/v1/topology/ibnetdiscover/qdr", headers=bearer(),
                        content="Switch: 0x1 s:\n  2 1[  ] ==( 4X 2.5 Gbps Active/  LinkUp)==> ?\n")
    assert broken.status_code == 422 and ":2: cannot read the far end" in broken.json()["detail"]
