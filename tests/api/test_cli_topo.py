"""The ``toposched topo`` commands as a user runs them: JSON contracts and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli.main import run

FIXTURES = Path(__file__).parents[1] / "fixtures"


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    assert run(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_parse_nvidia_smi_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, ["topo", "parse", str(FIXTURES / "nvsmi" / "dgx_h100_m.txt"),
                            "--json"])
    assert isinstance(result, dict) and result["format"] == "nvidia-smi"
    assert len(result["gpus"]) == 8 and len(result["nics"]) >= 8
    assert {"name", "cpu_affinity", "numa_affinity", "gpu_numa_id"} <= set(result["gpus"][0])
    assert {"name", "device"} <= set(result["nics"][0])
    link = next(lk for lk in result["links"] if {lk["a"], lk["b"]} == {"GPU0", "GPU1"})
    assert (link["type"], link["nvlinks"]) == ("NV", 18)
    n = len(result["gpus"]) + len(result["nics"])
    assert len(result["links"]) == n * (n - 1) // 2


def test_parse_lldp_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, ["topo", "parse", str(FIXTURES / "lldp" / "rail_host.json0"),
                            "--json"])
    assert isinstance(result, dict) and result["format"] == "lldp"
    neighbor = result["neighbors"][0]
    assert {"interface", "chassis_id", "chassis_name", "port_id", "port_descr", "vlans",
            "mgmt_ip"} <= set(neighbor)


@pytest.mark.parametrize(("fixture", "fmt"), [
    ("nccl/hgx_h100_8gpu.xml", "nccl-xml"), ("k8s/eks_p5.json", "k8s-nodes"),
    ("lldp/rail_host.kv", "lldp"), ("nvsmi/gb200_m.txt", "nvidia-smi")])
def test_format_is_detected(fixture: str, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, ["topo", "parse", str(FIXTURES / fixture), "--json"])
    assert isinstance(result, dict) and result["format"] == fmt


@pytest.mark.parametrize(("content", "message"), [
    (b"", "file is empty"),
    (b"\x00\x01\x02garbage", "binary data"),
    (b"hello world\n", "cannot tell the format"),
])
def test_bad_files_exit_2_with_one_line(tmp_path: Path, content: bytes, message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "capture.txt"
    path.write_bytes(content)
    assert run(["topo", "parse", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_p2p_matrix_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["topo", "parse", str(FIXTURES / "nvsmi" / "p2p_read.txt"),
                "--format", "nvidia-smi"]) == 2
    assert "p2p" in capsys.readouterr().err


def test_huge_file_is_refused_quickly(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.txt"
    with open(path, "wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    assert run(["topo", "parse", str(path)]) == 2
    assert "larger than" in capsys.readouterr().err


def test_show_draws_svg_and_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fabric = tmp_path / "fabric.json"
    assert run(["topo", "synth", "--zones", "1", "--pods-per-zone", "1", "--racks-per-pod", "2",
                "--hosts-per-rack", "2", "-o", str(fabric)]) == 0
    capsys.readouterr()
    svg, dot = tmp_path / "f.svg", tmp_path / "f.dot"
    summary = _json(capsys, ["topo", "show", str(fabric), "--svg", str(svg), "--dot", str(dot),
                             "--json"])
    assert isinstance(summary, dict) and summary["gpus"] == 32 and summary["rail_optimised"]
    assert svg.read_text().startswith("<svg") and "rail 0" in svg.read_text()
    assert dot.read_text().startswith("graph ")


def test_distance_unknown_gpu_exits_nonzero(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fabric = tmp_path / "fabric.json"
    assert run(["topo", "synth", "--zones", "1", "--pods-per-zone", "1", "--racks-per-pod", "1",
                "--hosts-per-rack", "1", "-o", str(fabric)]) == 0
    assert run(["topo", "distance", str(fabric), "nope/gpu0", "z0-p0-r0-h00/gpu1"]) == 2
    assert "unknown GPU 'nope/gpu0'" in capsys.readouterr().err


def test_build_rejects_malformed_host_file_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["topo", "build", "--inventory", "x.yaml", "--nvsmi", "no-equals-sign"]) == 2
    assert "expected HOST=FILE" in capsys.readouterr().err


def test_collect_reports_missing_tools_without_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "topo", "collect", "--json",
                           "--sysfs-root", "/nonexistent"],  # no RDMA device, whatever the host
                          capture_output=True, text=True, env={"PATH": "/nonexistent"},
                          check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert "not installed" in result["nvidia-smi"]["error"]
    assert "no RDMA device under /nonexistent" in result["rdma-devices"]["error"]


def test_collect_post_to_an_unreachable_scheduler_is_one_clear_line(tmp_path: Path) -> None:
    fake = tmp_path / "nvidia-smi"  # a stand-in tool that prints a real-shaped capture
    fake.write_text(f"#!/bin/sh\ncat {FIXTURES / 'nvsmi' / 'dgx_h100_m.txt'}\n")
    fake.chmod(0o755)
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "topo", "collect", "--post",
                           "http://127.0.0.1:9", "--json"], capture_output=True, text=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "cannot post the captures to http://127.0.0.1:9" in done.stderr


def test_demo_prints_every_tier_of_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    result = _json(capsys, ["demo", "--static", "--json"])
    assert isinstance(result, dict)
    tiers = [row["tier"] for row in result["tiers"]]
    assert tiers[0] == "same_gpu" and "cross_zone" in tiers and "same_leaf" in tiers
