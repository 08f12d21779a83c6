"""The benchmark harness: alternation, agreement checks, CPU conditions and the lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import harness

ROOT = Path(__file__).parents[2]


def _side(name: str, calls: list[str], value: object) -> harness.Side:
    def prepare() -> object:
        calls.append(f"prepare {name}")
        return lambda: calls.append(name) or value
    return harness.Side(name, prepare, ops=10)  # type: ignore[arg-type]


def test_sides_alternate_and_warmup_is_not_recorded() -> None:
    calls: list[str] = []
    result = harness.compare([_side("a", calls, 1), _side("b", calls, 1)],
                             repeats=3, warmup=1)
    bodies = [c for c in calls if not c.startswith("prepare")]
    assert bodies == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert result.order == [["b", "a"], ["a", "b"], ["b", "a"]]
    assert len(result.sides["a"].wall.values) == 3
    assert len(result.ratio("b", "a").values) == 3
    assert result.agreed


def test_different_outputs_are_a_disagreement() -> None:
    with pytest.raises(harness.Disagreement, match="'b' returned a different result"):
        harness.compare([_side("a", [], [1, 2]), _side("b", [], [1, 3])], repeats=1, warmup=0)


def test_canonical_maps_representations_before_comparing() -> None:
    a = _side("a", [], {"w1": 3, "w2": 0})
    b = _side("b", [], {"w1": 3})
    a.canonical = lambda out: {k: v for k, v in out.items() if v}
    harness.compare([a, b], repeats=1, warmup=0)


def test_samples_are_pooled_and_ratios_paired() -> None:
    def fast() -> object:
        return lambda: harness.Samples("same", [1e-6, 2e-6], {"queue": [1e-7]})

    def slow() -> object:
        return lambda: harness.Samples("same", [4e-6, 8e-6])

    result = harness.compare([harness.Side("anchor", slow), harness.Side("cand", fast)],
                             repeats=2, warmup=0)
    assert result.sides["cand"].samples == [1e-6, 2e-6, 1e-6, 2e-6]
    assert result.sides["cand"].stages == {"queue": [1e-7, 1e-7]}
    assert result.latency_ratio("cand", "anchor") == pytest.approx(4.0)


@pytest.mark.skipif(shutil.which("nice") is None, reason="needs nice(1)")
def test_awake_condition_starts_busy_loops_and_stops_them() -> None:
    with harness.cpu_condition("awake", settle_s=0.05) as cond:
        children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True,
                                  text=True).stdout.split()
        assert cond.helpers == harness.vcpus()
        assert len(children) >= cond.helpers
        nices = {int(Path(f"/proc/{pid}/stat").read_text().split()[18]) for pid in children}
        assert 19 in nices
        time.sleep(0.1)  # a few /proc/stat ticks (10 ms each), or busy_fraction has none
    left = [pid for pid in children if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    assert not left
    assert cond.load_after is not None and cond.busy_fraction is not None


def test_unknown_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown CPU condition 'warm'"), \
            harness.cpu_condition("warm"):
        pass


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock(1)")
def test_a_run_under_flock_is_not_blocked_by_its_own_lock(tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    probe = ("from bench import harness\n"
             "with harness.bench_lock() as how: print(how)\n")
    env = {**os.environ, "TOPOSCHED_BENCH_LOCK": str(lock)}
    alone = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    wrapped = subprocess.run(["flock", str(lock), sys.executable, "-c", probe], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60, check=True)
    assert (alone.stdout.strip(), wrapped.stdout.strip()) == ("acquired", "inherited")


@pytest.mark.process
def test_prefix_bench_runs_both_sides_and_checks_their_answers(tmp_path: Path) -> None:
    """The prefix benchmark end to end on a slice of the trace: every figure compared."""
    pytest.importorskip("dynamo._core", reason="ai-dynamo-runtime is installed in test mode")
    done = subprocess.run(
        [sys.executable, "bench/prefix_index.py", "--requests", "300", "--queries", "40",
         "--workers", "8", "--repeats", "1", "--warmup", "0", "--conditions", "idle",
         "--no-lock", "--no-memory", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert "done in" in done.stderr
    data = json.loads((tmp_path / "prefix_index.json").read_text())
    (row,) = data["conditions"][0]["scales"]
    for figure in ("events", "lookups", "route"):
        assert row[figure]["agreed"] is True
        assert set(row[figure]["sides"]) == {"dynamo", "toposched"}
        assert row[figure]["paired_ratio_vs_first"]["toposched"]["median"] > 0
    assert "toposched / Dynamo (CPU)" in (tmp_path / "prefix_index.md").read_text()
