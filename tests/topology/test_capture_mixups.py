"""Captures given for the wrong host are refused; byte-order marks and UTF-16 are read
(issue 11 item 13): through the CLI and through the service's feeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.cli.main import run
from api.cli.topo import _parse_as
from tests.api.service_builders import bearer, make_app
from tests.topology.builders import one_rack_inventory
from topology.detect import detect_format
from topology.errors import ToposchedError
from topology.source import decode_capture, read_capture

FIXTURES = Path(__file__).parents[1] / "fixtures"
LLDP = FIXTURES / "lldp" / "rail_host.json0"
NCCL = FIXTURES / "nccl" / "hgx_h100_8gpu.xml"
NVSMI = FIXTURES / "nvsmi" / "dgx_h100_m.txt"
NETDEVS = ("{mlx5_0: enp26s0np0, mlx5_3: enp60s0np0, mlx5_4: enp77s0np0, "
           "mlx5_5: enp94s0np0, mlx5_6: enp156s0np0, mlx5_9: enp188s0np0, "
           "mlx5_10: enp204s0np0, mlx5_11: enp220s0np0}")


def _inventory(tmp_path: Path, **captures: str) -> Path:
    """Two hosts h1, h2 in one rack; ``captures`` gives both the same capture of a kind."""
    path = tmp_path / "inventory.yaml"
    path.write_text(one_rack_inventory({h: {"nvsmi": NVSMI, **captures, "netdevs": NETDEVS}
                                        for h in ("h1", "h2")}))
    return path


def test_one_lldp_capture_for_two_hosts_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inventory = _inventory(tmp_path, lldp=str(LLDP))
    assert run(["topo", "build", "--inventory", str(inventory), "-o",
                str(tmp_path / "f.json")]) == 1
    err = capsys.readouterr().err
    assert "reached by h1" in err and "h2" in err and "leaf-r4 swp17s0" in err
    assert "same LLDP capture given for two hosts" in err and "Traceback" not in err
    assert not (tmp_path / "f.json").exists()


def test_one_nccl_dump_for_two_hosts_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    inventory = _inventory(tmp_path, nccl=str(NCCL))
    assert run(["topo", "build", "--inventory", str(inventory)]) == 1
    err = capsys.readouterr().err
    assert "NIC GUID(s) 0xa088c20300f1e2d4" in err and "h1 (mlx5_0" in err and "h2" in err


def test_keep_going_records_the_mixup(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    inventory = _inventory(tmp_path, lldp=str(LLDP))
    assert run(["topo", "build", "--inventory", str(inventory), "--keep-going", "-o",
                str(tmp_path / "f.json")]) == 0
    assert "CONFLICT: switch port(s)" in capsys.readouterr().out


def test_two_captures_for_one_host_are_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    inventory = _inventory(tmp_path)
    assert run(["topo", "build", "--inventory", str(inventory), "--nvsmi", f"h1={NVSMI}",
                "--nvsmi", f"h1={tmp_path / 'other.txt'}"]) == 2
    err = capsys.readouterr().err
    assert "--nvsmi names host h1 twice" in err and "other.txt" in err
    assert err.count("\n") == 1


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


def test_the_service_refuses_the_second_host_with_the_same_lldp(client: TestClient) -> None:
    body = one_rack_inventory({h: {"netdevs": NETDEVS} for h in ("h1", "h2")})
    text = LLDP.read_text()
    for host in ("h1", "h2"):
        answer = client.put(f"/v1/topology/hosts/{host}/nvidia-smi", content=NVSMI.read_text(),
                            headers=bearer())
        assert answer.status_code == 200, answer.text
    assert client.put("/v1/topology/inventory", content=body, headers=bearer()).status_code == 200
    assert client.put("/v1/topology/hosts/h1/lldp", content=text,
                      headers=bearer()).status_code == 200
    answer = client.put("/v1/topology/hosts/h2/lldp", content=text, headers=bearer())
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert any("leaf-r0 swp17s0" in c and "h2" in c for c in answer.json()["conflicts"])
    fabric = client.get("/v1/topology/fabric", headers=bearer()).json()
    h2 = next(h for h in fabric["hosts"] if h["name"] == "h2")
    assert all(nic["leaf"] is None for nic in h2["nics"])  # the refused feed changed nothing


def _fixtures() -> list[Path]:
    found = []
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file() and path.suffix in (".txt", ".json", ".json0", ".kv", ".xml",
                                              ".yaml", ".out"):
            try:
                text = read_capture(path)
                _parse_as(detect_format(text, str(path)), text, str(path))
            except ToposchedError:
                continue  # fixtures of bad input
            found.append(path)
    return found


@pytest.mark.parametrize("path", _fixtures(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_byte_order_mark_or_utf16_changes_nothing(path: Path) -> None:
    raw = path.read_bytes()
    text = decode_capture(raw, "plain")
    expected = _parse_as(detect_format(text, "x"), text, "x")
    for variant in (b"\xef\xbb\xbf" + raw, b"\xff\xfe" + text.encode("utf-16-le"),
                    b"\xfe\xff" + text.encode("utf-16-be")):
        decoded = decode_capture(variant, "variant")
        assert _parse_as(detect_format(decoded, "x"), decoded, "x") == expected
    # library callers that hand over text with the mark still in it
    marked = "\ufeff" + text
    assert _parse_as(detect_format(marked, "x"), marked, "x") == expected


def test_a_capture_with_a_bom_is_accepted_by_the_cli_and_the_service(
        tmp_path: Path, client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    marked = b"\xef\xbb\xbf" + NVSMI.read_bytes()
    (tmp_path / "bom.txt").write_bytes(marked)
    assert run(["topo", "parse", str(tmp_path / "bom.txt")]) == 0
    assert "nvidia-smi: 8 gpus" in capsys.readouterr().out
    answer = client.put("/v1/topology/hosts/h1/nvidia-smi", content=marked, headers=bearer())
    assert answer.status_code == 200, answer.text
