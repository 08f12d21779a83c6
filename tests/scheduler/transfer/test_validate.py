"""Validation before NIXL: every rule reported with a path, all at once."""

from __future__ import annotations

import json

import pytest

from scheduler.transfer.plan import BlockRun, KvLayout, KvRegion
from scheduler.transfer.validate import parse_plan, plan_issues, validate_plan
from tests.scheduler.transfer.builders import layout, plan
from topology.errors import ParseError, ValidationError


def _paths(p: object) -> list[str]:
    return [issue.path for issue in plan_issues(p)]  # type: ignore[arg-type]


def test_a_built_plan_has_no_issues() -> None:
    assert plan_issues(plan()) == []


def test_block_out_of_range_names_the_index() -> None:
    bad = plan().model_copy(update={"src_blocks": (0, 1, 2, 64)})
    with pytest.raises(ValidationError, match=r"src_blocks\[3\]: block 64 out of range 0..63"):
        validate_plan(bad)


def test_mismatched_lengths() -> None:
    bad = plan().model_copy(update={"dst_blocks": (0, 1)})
    assert "dst_blocks" in _paths(bad)


def test_overlapping_destination_blocks() -> None:
    bad = plan().model_copy(update={"dst_blocks": (0, 1, 1, 5)})
    with pytest.raises(ValidationError, match="listed twice"):
        validate_plan(bad)


def test_zero_length_transfer() -> None:
    bad = plan().model_copy(update={"src_blocks": (), "dst_blocks": ()})
    assert "src_blocks" in _paths(bad)


def test_zero_length_region_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        KvRegion(base_addr=0, block_bytes=0)


def test_overlapping_regions_in_a_layout() -> None:
    overlapping = KvLayout(kind="per_layer", num_blocks=4, regions=(
        KvRegion(base_addr=0, block_bytes=100), KvRegion(base_addr=300, block_bytes=100)))
    src = plan().src.model_copy(update={"layout": overlapping})
    assert "src.layout.regions[1]" in _paths(plan().model_copy(update={"src": src}))


def test_block_major_layout_with_two_regions() -> None:
    two = layout(regions=2).model_copy(update={"kind": "block_major"})
    src = plan().src.model_copy(update={"layout": two})
    assert "src.layout.regions" in _paths(plan().model_copy(update={"src": src}))


def test_incompatible_layouts() -> None:
    dst = plan().dst.model_copy(update={"layout": layout(block_bytes=8192)})
    assert "dst.layout.regions[0].block_bytes" in _paths(plan().model_copy(update={"dst": dst}))


def test_runs_that_do_not_match_the_blocks() -> None:
    bad = plan().model_copy(update={"runs": (BlockRun(src_start=0, dst_start=0, count=4),)})
    assert _paths(bad) == ["runs"]


def test_wrong_initiator_for_the_mode() -> None:
    bad = plan(mode="READ").model_copy(update={"initiator": "prefill-0"})
    assert "initiator" in _paths(bad)


def test_metadata_that_is_not_base64() -> None:
    src = plan().src.model_copy(update={"agent_metadata_b64": "not base64!"})
    assert "src.agent_metadata_b64" in _paths(plan().model_copy(update={"src": src}))


def test_plan_for_another_worker() -> None:
    with pytest.raises(ValidationError, match="not for worker 'decode-9'"):
        validate_plan(plan(), local_worker="decode-9")


def test_stale_epoch() -> None:
    with pytest.raises(ValidationError, match="stale plan: built for epoch 1"):
        validate_plan(plan(), epochs={"decode-0": 2})


def test_many_issues_are_reported_together() -> None:
    bad = plan().model_copy(update={"src_blocks": (0, 99, 99), "dst_blocks": (0,)})
    with pytest.raises(ValidationError) as info:
        validate_plan(bad)
    assert len(info.value.issues) >= 3


def test_parse_plan_accepts_its_own_json() -> None:
    p = plan()
    assert parse_plan(p.model_dump_json()) == p


def test_parse_plan_names_an_unknown_schema_version() -> None:
    data = json.loads(plan().model_dump_json()) | {"schema_version": 2}
    with pytest.raises(ParseError, match=r"unsupported schema_version 2.*expected 1"):
        parse_plan(data, source="job 7")


def test_parse_plan_reports_field_paths() -> None:
    data = json.loads(plan().model_dump_json())
    data["dst"]["layout"]["num_blocks"] = 0
    with pytest.raises(ValidationError, match=r"dst\.layout\.num_blocks"):
        parse_plan(data)


def test_parse_plan_rejects_non_json() -> None:
    with pytest.raises(ParseError, match="not JSON"):
        parse_plan(b"{nope")


def test_pool_sizes_are_bounded_and_strictly_integers() -> None:
    """One registration must not be able to exhaust the scheduler's memory (fuzz find)."""
    import pydantic

    from scheduler.transfer.plan import MAX_POOL_BLOCKS, KvLayout, KvRegion

    region = KvRegion(base_addr=4096, block_bytes=4096)
    assert KvLayout(num_blocks=MAX_POOL_BLOCKS, regions=(region,)).num_blocks == MAX_POOL_BLOCKS
    for bad in (MAX_POOL_BLOCKS + 1, 1e12, "1000000000000"):
        with pytest.raises(pydantic.ValidationError):
            KvLayout.model_validate({"num_blocks": bad, "regions": [region.model_dump()]})


def test_reports_name_known_tiers_only() -> None:
    """An unknown tier is bad input at the boundary, not a 500 later (fuzz find)."""
    import pydantic

    from scheduler.transfer.plan import TransferReport

    ok = TransferReport(plan_id="p", worker="w", role="initiator", outcome="ok", tier="same_leaf")
    assert ok.tier == "same_leaf"
    with pytest.raises(pydantic.ValidationError, match="unknown tier"):
        TransferReport(plan_id="p", worker="w", role="initiator", outcome="ok", tier="rack")
