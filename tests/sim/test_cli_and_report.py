"""``toposched simulate`` end to end, and the report writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api.cli.main import run as cli
from api.cli.simulate import parse_runs
from sim.report import RunRecord, SimReport, markdown, write_report
from tests.sim.builders import run, small_trace
from topology.errors import InputError


def test_simulate_json_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli(["simulate", "--cluster", "small", "--workload", "agentic:sessions=4",
                "--policies", "fabric-cost,fabric-cost@unaware+fabric-blind+no-prefix-pull,"
                "round-robin+aggregated",
                "--placement", "greedy", "--json", "--no-plots", "-o", str(tmp_path)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    labels = [r["label"] for r in report["runs"]]
    assert labels == ["fabric-cost/greedy", "fabric-cost/unaware+fabric-blind+no-prefix-pull",
                      "round-robin/greedy+aggregated"]
    assert all(r["summary"]["completed"] == 24 for r in report["runs"])
    assert (tmp_path / "simulation.json").is_file()
    assert "| fabric-cost/greedy |" in (tmp_path / "simulation.md").read_text()


def test_simulate_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["simulate", "--cluster", "small", "--workload", "agentic:bogus=1"]) == 2
    assert "bad option" in capsys.readouterr().err
    assert cli(["simulate", "--cluster", "nowhere", "--workload", "agentic"]) == 2


def test_parse_runs_rejects_unknown_placement_and_suffix() -> None:
    runs = parse_runs("a@unaware,b+fabric-blind+aggregated", "solver")
    assert runs[1].placement == "solver"
    assert runs[1].flags == {"fabric-blind", "aggregated"}
    with pytest.raises(InputError):
        parse_runs("a@magic", "solver")
    with pytest.raises(InputError):
        parse_runs("a+fast", "solver")
    with pytest.raises(InputError, match="contradict"):
        parse_runs("a+prefix-pull+no-prefix-pull", "solver")


def test_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    summary = run(small_trace(sessions=4), placement="greedy")
    record = RunRecord(label="x", cluster="small", workload="agentic", policy="fabric-cost",
                       placement="greedy", summary=summary)
    report = SimReport(title="t", runs=(record, record.model_copy(update={"label": "y"})),
                       sections=(("Validation", "text"),))
    paths = write_report(report, tmp_path, plots_dir=tmp_path / "img")
    assert {p.suffix for p in paths} == {".json", ".md", ".png"}
    text = (tmp_path / "simulation.md").read_text()
    assert "## Validation" in text and "(img/" in text
    assert SimReport.model_validate_json((tmp_path / "simulation.json").read_text()) == report
    assert "| y |" in markdown(report)
