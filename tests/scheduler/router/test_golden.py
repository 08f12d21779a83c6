"""Every recorded decision of the golden scenarios is still made, exactly
(:mod:`tests.scheduler.router.golden`)."""

from __future__ import annotations

import json

import pytest

import scheduler.router.cost as cost_module
import scheduler.router.router as router_module
from tests.scheduler.router.golden import GOLDEN, all_scenarios, digest, summary


@pytest.mark.parametrize("scalar_max", [None, 0, 64],
                         ids=["default", "numpy-only", "python-floats-up-to-64"])
def test_the_router_still_makes_every_golden_decision(
        scalar_max: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with the few-candidate paths (cost model and fabric-cost handler on Python
    numbers, ``SCALAR_MAX``; the router's cached blocks per position, ``FEW_WORKERS``)
    forced off, and on for every side of up to 64 candidates and every snapshot."""
    if scalar_max is not None:
        monkeypatch.setattr(cost_module, "SCALAR_MAX", scalar_max)
        monkeypatch.setattr(router_module, "FEW_WORKERS", scalar_max and 1 << 20)
    golden = json.loads(GOLDEN.read_text())
    seen, changed = set(), []
    for key, decisions in all_scenarios():
        seen.add(key)
        want = golden.get(key)
        if want is None or want["digest"] != digest(decisions):
            changed.append(f"{key}: {want and want['pairs']} -> {summary(decisions)}")
    assert not changed, f"{len(changed)} scenario(s) decide differently:\n" + "\n".join(
        changed[:10])
    assert seen == set(golden), "scenarios were added or removed: rewrite the golden file"
