"""Every recorded decision of the golden scenarios is still made, exactly
(:mod:`tests.scheduler.router.golden`)."""

from __future__ import annotations

import json

from tests.scheduler.router.golden import GOLDEN, all_scenarios, digest, summary


def test_the_router_still_makes_every_golden_decision() -> None:
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
