"""The README's first command, end to end: scheduler, sidecars, NIXL bytes, request stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.process
@pytest.mark.timeout(300)
def test_the_default_demo_moves_kv_between_workers_on_three_tiers() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "demo", "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=290, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["routed"] == 32 and summary["unschedulable"] == 0
    assert summary["failed_transfers"] == 0
    # prefill and decode on different workers, the KV moved between them (a decode
    # worker that holds most of a session's prompt may still prefill the rest itself)
    pairs = [pair.split(" → ") for pair in summary["routes_by_pair"] if " → " in pair]
    assert pairs and all(prefill != decode for prefill, decode in pairs)
    disaggregated = summary["routed"] - summary["local_prefill"]
    assert disaggregated >= 3 * summary["routed"] // 4, summary["routes_by_pair"]
    tiers = summary["transfers_by_tier"]
    assert sum(tiers.values()) == disaggregated, tiers  # each of them moved its KV
    assert {"nvlink", "same_leaf", "cross_zone"} <= {t for t, n in tiers.items() if n}, tiers
    assert set(summary["latency_ms_p50_by_tier"]) == set(tiers)
    model = summary["fabric_model_by_tier"]
    assert model["nvlink"]["latency_us"] < model["same_leaf"]["latency_us"] \
        < model["cross_zone"]["latency_us"]
    assert summary["prefill_cache_hit_ratio"] > 0  # the sessions share system prompts
    print(f"demo took {elapsed:.1f} s: {tiers}")


@pytest.mark.process
def test_the_vllm_demo_without_a_vllm_environment_says_how_to_create_it(tmp_path: Path) -> None:
    env = {**os.environ, "TOPOSCHED_VLLM_PYTHON": str(tmp_path / "no-venv" / "python")}
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "demo", "--engines", "vllm"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert "./scripts/bootstrap.sh test" in done.stderr
    assert "TOPOSCHED_VLLM_PYTHON" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.process
def test_the_vllm_demo_refuses_the_fake_engine_demos_options() -> None:
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "demo", "--engines", "vllm",
                           "--sessions", "3", "--static"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "--static, --sessions only apply to the fake engines' demo" in done.stderr
