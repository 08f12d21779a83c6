"""The README's first command, end to end: scheduler, sidecars, NIXL bytes, request stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.process
@pytest.mark.timeout(180)
def test_demo_routes_requests_and_moves_verified_kv() -> None:
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "demo", "--sessions", "3",
                           "--turns", "2", "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=170, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "/ui" in done.stderr  # the live page's address (stderr: --json keeps stdout clean)
    summary = json.loads(done.stdout)
    assert summary["routed"] == 6 and summary["unschedulable"] == 0
    assert summary["failed_transfers"] == 0
    assert sum(summary["transfers_by_tier"].values()) >= 1
    assert summary["prefill_cache_hit_ratio"] > 0  # the sessions share system prompts
