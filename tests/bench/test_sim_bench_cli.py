"""bench/sim_bench.py's one-row mode: a row of the table across trace seeds, alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "sim_bench.py"), *args],
                          capture_output=True, text=True, timeout=600, check=False)


def test_only_prints_one_row_of_the_seed_table() -> None:
    done = _bench("--quick", "--only", "frontier llama-3-70b (TP4) 2:1", "--seeds", "1",
                  "--no-prefix-pull")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| frontier")]
    assert len(rows) == 2  # the default, then the default with pulls off (here the same)
    assert rows[0] == rows[1]  # --no-prefix-pull: the default runs without pulls too
    assert "topology-unaware" in rows[0] or "single-domain" in rows[0]
    # goodput, TPOT p99, TTFT p99: two seeds and their mean each
    assert all(cell.count(" / ") == 1 for cell in rows[0].split(" | ")[2:5])
    assert "seeds 0, 1" in done.stdout and "pulls off" in done.stdout


def test_only_and_seeds_refuse_what_they_cannot_run() -> None:
    done = _bench("--quick", "--only", "no-such-scenario")
    assert done.returncode == 2 and "--only" in done.stderr
    done = _bench("--only", "tcp-zones", "--seeds", "one")
    assert done.returncode == 2 and "--seeds" in done.stderr


def test_rerender_rewrites_the_report_from_its_json(tmp_path: Path) -> None:
    data = json.loads((ROOT / "bench" / "results" / "simulation.json").read_text())
    data["sections"] = [[title, "stale" if title == "What the numbers say" else text]
                        for title, text in data["sections"]]
    (tmp_path / "simulation.json").write_text(json.dumps(data))
    done = _bench("--rerender", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "simulation.md").read_text()
    assert "**What runs here.**" in text and "\nstale\n" not in text
    again = json.loads((tmp_path / "simulation.json").read_text())
    assert again["seed_spread"] == data["seed_spread"] and again["runs"] == data["runs"]
    assert list((tmp_path / "sim").glob("*_latency.png"))  # the runs' plots, redrawn
