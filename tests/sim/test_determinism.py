"""A seeded run gives the same figures in separate processes (no id() or str-hash order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
from tests.sim.builders import run, small_trace
figures = []
cases = ((True, "fabric-cost", "unaware"), (False, "least-loaded", "greedy"))
for thin, policy, placement in cases:
    s = run(small_trace(sessions=12, seed=3).scaled(4), thin=thin, policy=policy,
            placement=placement, seed=3)
    data = s.model_dump()
    data.pop("wall_s")
    figures.append(data)
print(json.dumps(figures))
"""


def _figures(hash_seed: str) -> object:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout)


def test_same_figures_under_different_hash_seeds() -> None:
    assert _figures("1") == _figures("2")
