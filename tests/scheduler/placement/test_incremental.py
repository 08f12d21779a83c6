"""Re-solving after a failure moves few instances and says how many."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scheduler.placement import (
    check,
    moved_instances,
    place,
    prepare,
    replace_after_failure,
)
from tests.scheduler.placement.builders import request
from topology.errors import InputError


def test_host_failure_moves_only_its_instances_and_reports_the_count() -> None:
    req = request()
    before = place(req)
    busy = before.by_role("prefill")[0].host
    lost = [i.id for i in before.instances if i.host == busy]
    after = replace_after_failure(replace(req, current=before), [busy])
    assert check(prepare(replace(req, current=before, exclude=(busy,))), after) == ()
    assert all(i.host != busy for i in after.instances)
    moved = moved_instances(before, after)
    assert after.moved == len(moved) == after.objective.churn
    assert set(lost) <= set(moved)
    # The cost optimum is kept; beyond the lost instances, only a few re-balance.
    assert len(moved) <= len(lost) + 4
    assert after.objective.transfer_cost_ms <= after.lower_bound_ms * 1.02


def test_resolve_without_failure_moves_nothing() -> None:
    req = request()
    before = place(req)
    again = place(replace(req, current=before))
    assert again.moved == 0
    assert again.objective.transfer_cost_ms <= before.objective.transfer_cost_ms * (1 + 1e-9)


def test_gpu_failure_inside_an_instance_moves_that_instance() -> None:
    req = request()
    before = place(req)
    victim = before.by_role("decode")[0]
    after = replace_after_failure(replace(req, current=before), [victim.gpus[1]])
    assert victim.id in moved_instances(before, after)
    assert victim.gpus[1] not in {g for i in after.instances for g in i.gpus}
    assert after.moved is not None and after.moved >= 1


def test_failure_resolve_needs_the_current_placement() -> None:
    with pytest.raises(InputError, match="current placement"):
        replace_after_failure(request(), ["z0-p0-r0-h00"])
