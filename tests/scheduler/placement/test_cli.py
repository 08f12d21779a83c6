"""``toposched place``: JSON output, files and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli.main import run
from tests.topology.builders import small_fabric

_WORKLOAD = """\
# Chat traffic for Llama-3-70B: 4K-token prompts, short answers.
model: llama-3-70b
rate_rps: 6
input_tokens_mean: 4000
input_tokens_p90: 6000
output_tokens_mean: 300
ttft_slo_ms: 2000
tpot_slo_ms: 50
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    fabric = tmp_path / "fabric.json"
    small_fabric().save(fabric)
    workload = tmp_path / "workload.yaml"
    workload.write_text(_WORKLOAD, encoding="utf-8")
    return {"fabric": str(fabric), "workload": str(workload), "dir": str(tmp_path)}


def _place(files: dict[str, str], *extra: str) -> int:
    return run(["place", "--fabric", files["fabric"], "--workload", files["workload"],
                "--time-limit", "1", *extra])


def test_json_output_and_file(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    out = Path(files["dir"]) / "placement.json"
    assert _place(files, "--prefill", "4", "--decode", "6", "--json", "-o", str(out)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text(encoding="utf-8"))
    assert {"instances", "pairings", "objective", "lower_bound_ms", "status",
            "solve_time_s", "method"} <= set(printed)
    assert set(printed["objective"]) == {"transfer_cost_ms", "churn", "imbalance"}
    instance = printed["instances"][0]
    assert {"id", "gpus", "role", "nvlink_domain", "rack", "zone"} <= set(instance)
    assert len(printed["instances"]) == 10
    assert all(0 < p["weight"] <= 1 for p in printed["pairings"])
    assert printed["status"] in ("optimal", "feasible", "heuristic")


def test_counts_from_capacity_sizing_and_text_summary(
        files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _place(files) == 0
    text = capsys.readouterr().out
    assert "expected KV transfer" in text
    assert "lower bound" in text


def test_failure_resolve_reports_moved(files: dict[str, str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    current = Path(files["dir"]) / "current.json"
    assert _place(files, "--prefill", "4", "--decode", "6", "-o", str(current)) == 0
    host = json.loads(current.read_text(encoding="utf-8"))["instances"][0]["host"]
    capsys.readouterr()
    assert _place(files, "--prefill", "4", "--decode", "6", "--current", str(current),
                  "--exclude", host, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["moved"] >= 1
    assert all(i["host"] != host for i in result["instances"])


def test_infeasible_request_exits_1_with_reason(files: dict[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _place(files, "--prefill", "40", "--decode", "2") == 1
    assert "prefill capacity short by 20 %" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (("--model", "llama-9"), "unknown model"),
    (("--tp-prefill", "3"), "divides no NVLink domain"),
    (("--pin", "z0-p0-r0-h00=verify"), "TARGET=prefill"),
    (("--max-rack-share", "150"), "max-rack-share"),
    (("--exclude", "no-such-host"), "no-such-host"),
    (("--gpu-type", "Z9000"), "--gpu-type"),
])
def test_bad_input_exits_2(files: dict[str, str], capsys: pytest.CaptureFixture[str],
                           args: tuple[str, ...], message: str) -> None:
    assert _place(files, *args) == 2
    assert message in capsys.readouterr().err


def test_negative_rate_is_reported_with_its_path(files: dict[str, str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    Path(files["workload"]).write_text(_WORKLOAD.replace("rate_rps: 6", "rate_rps: -5"),
                                       encoding="utf-8")
    assert _place(files) == 2
    assert "rate_rps" in capsys.readouterr().err
