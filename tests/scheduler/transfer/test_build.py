"""Plan building: coalescing into runs, delta selection, allocation, roles."""

from __future__ import annotations

import itertools
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.transfer.build import allocate, build_plan, coalesce
from scheduler.transfer.hints import hints_for_tier
from scheduler.transfer.plan import TransferPlan
from tests.scheduler.transfer.builders import plan, registration
from topology.errors import UnschedulableError, ValidationError
from topology.tiers import Tier


def test_coalesce_merges_runs_contiguous_on_both_sides() -> None:
    runs = coalesce([0, 1, 2, 5, 6, 9], [10, 11, 12, 3, 4, 20])
    assert [(r.src_start, r.dst_start, r.count) for r in runs] == [
        (0, 10, 3), (5, 3, 2), (9, 20, 1)]


def test_coalesce_breaks_a_run_when_only_one_side_is_contiguous() -> None:
    runs = coalesce([0, 1, 2], [5, 6, 8])
    assert [(r.src_start, r.dst_start, r.count) for r in runs] == [(0, 5, 2), (2, 8, 1)]


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), min_size=1, max_size=60))
def test_runs_expand_back_to_the_pairs_and_are_maximal(pairs: list[tuple[int, int]]) -> None:
    src, dst = [p[0] for p in pairs], [p[1] for p in pairs]
    runs = coalesce(src, dst)
    assert [(r.src_start + k, r.dst_start + k) for r in runs for k in range(r.count)] == pairs
    for a, b in itertools.pairwise(runs):
        end = a.count - 1
        assert not (b.src_start == a.src_start + end + 1 and b.dst_start == a.dst_start + end + 1)


def test_read_plan_is_posted_by_decode_and_write_plan_by_prefill() -> None:
    assert plan(mode="READ").initiator == "decode-0"
    assert plan(mode="READ").target == "prefill-0"
    assert plan(mode="WRITE").initiator == "prefill-0"
    assert plan(mode="WRITE").target == "decode-0"


def test_descriptor_count_is_runs_times_regions() -> None:
    assert plan(src_blocks=(0, 1, 2, 5)).descriptors == 2
    per_layer = plan(src_blocks=(0, 1, 2, 5), regions=8, block_bytes=8192)
    assert per_layer.descriptors == 16
    assert per_layer.total_bytes == 4 * 8192


def test_delta_moves_only_blocks_after_the_cached_prefix() -> None:
    p = plan(src_blocks=tuple(range(10)), dst_blocks=tuple(range(20, 30)), cached_prefix=6)
    assert p.src_blocks == (6, 7, 8, 9)
    assert p.dst_blocks == (26, 27, 28, 29)
    assert p.total_bytes == 4 * 4096


def test_destination_blocks_come_from_the_free_list_lowest_first() -> None:
    p = build_plan(plan_id="r", src=registration("a"), dst=registration("b"),
                   src_blocks=[4, 5, 6], dst_free=[9, 3, 7, 8],
                   hints=hints_for_tier(Tier.NVLINK, "DRAM"))
    assert p.dst_blocks == (3, 7, 8)


def test_too_few_free_blocks_is_unschedulable() -> None:
    with pytest.raises(UnschedulableError, match="2 free KV blocks, 3 needed"):
        allocate([1, 2], 3, "decode-0")


def test_nothing_to_move_is_unschedulable() -> None:
    with pytest.raises(UnschedulableError, match="already holds all"):
        plan(src_blocks=(0, 1), cached_prefix=2)


def test_build_rejects_what_validation_rejects() -> None:
    with pytest.raises(ValidationError, match="mismatched lengths"):
        plan(src_blocks=(0, 1, 2), dst_blocks=(0, 1))


def test_plan_round_trips_through_json() -> None:
    original = plan(regions=2, block_bytes=8192)
    assert type(original).model_validate_json(original.model_dump_json()) == original


def test_notification_path_defaults_by_mode() -> None:
    assert plan(mode="READ").notify == "scheduler"   # the prefill side only frees blocks
    assert plan(mode="WRITE").notify == "nixl"       # the decode side is waiting
    assert plan(mode="READ", notify="nixl").notify == "nixl"


@pytest.mark.parametrize("bad", [{"deadline_s": 7200.0}, {"plan_id": "has space"},
                                 {"not_after": -1.0}])
def test_build_applies_the_plans_field_constraints(bad: dict[str, Any]) -> None:
    # The rules do not cover these; pydantic checks the top-level fields once.
    with pytest.raises(pydantic.ValidationError):
        plan(**bad)


def test_a_built_plan_equals_one_read_back_from_its_json() -> None:
    built = plan(src_blocks=(0, 1, 2, 5), dst_blocks=(9, 10, 11, 3), block_hashes=(1, 2, 3, 4))
    assert TransferPlan.model_validate_json(built.model_dump_json()) == built
