"""Checks a plan must pass before any of it reaches NIXL.

NIXL accepts zero-length and overlapping descriptors silently and trusts whatever
addresses it is given, so every rule that keeps a transfer inside the registered pools
is checked here, all issues reported at once (:class:`~topology.errors.ValidationError`
with JSON paths). The scheduler validates when it builds a plan; the sidecar validates
again on receipt (it may run another version, and the plan crossed a network).
"""

from __future__ import annotations

import binascii
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from scheduler.transfer.plan import SCHEMA_VERSION, KvLayout, TransferPlan
from topology.errors import Issue, Location, ParseError, ValidationError

_MAX_ADDR = 1 << 64


def layout_issues(layout: KvLayout, path: str) -> list[Issue]:
    """Zero-length, wrapping or overlapping regions of one layout."""
    issues: list[Issue] = []
    if layout.kind == "block_major" and len(layout.regions) != 1:
        issues.append(Issue(f"{path}.regions", "block_major layout must have one region, "
                            f"got {len(layout.regions)}"))
    spans = sorted((*layout.region_span(i), i) for i in range(len(layout.regions)))
    for _start, end, i in spans:
        if end > _MAX_ADDR:
            issues.append(Issue(f"{path}.regions[{i}]", "region runs past the address space"))
    for (_, end, i), (start, _, j) in itertools.pairwise(spans):
        if start < end:
            issues.append(Issue(f"{path}.regions[{j}]", f"overlaps regions[{i}]"))
    return issues


def _block_issues(blocks: Sequence[int], num_blocks: int, path: str) -> list[Issue]:
    issues: list[Issue] = []
    seen: set[int] = set()
    for i, block in enumerate(blocks):
        if not 0 <= block < num_blocks:
            issues.append(Issue(f"{path}[{i}]", f"block {block} out of range 0..{num_blocks - 1}"))
        elif block in seen:
            issues.append(Issue(f"{path}[{i}]", f"block {block} listed twice (overlap)"))
        seen.add(block)
    return issues


def _compat_issues(src: KvLayout, dst: KvLayout) -> list[Issue]:
    if len(src.regions) != len(dst.regions):
        return [Issue("dst.layout.regions", f"{len(dst.regions)} regions, source has "
                      f"{len(src.regions)}")]
    return [Issue(f"dst.layout.regions[{i}].block_bytes",
                  f"{b.block_bytes} bytes per block, source has {a.block_bytes}")
            for i, (a, b) in enumerate(zip(src.regions, dst.regions, strict=True))
            if a.block_bytes != b.block_bytes]


def _run_issues(plan: TransferPlan) -> list[Issue]:
    expanded = [(run.src_start + k, run.dst_start + k) for run in plan.runs
                for k in range(run.count)]
    if expanded != list(zip(plan.src_blocks, plan.dst_blocks, strict=False)):
        return [Issue("runs", "runs do not expand to (src_blocks, dst_blocks)")]
    if plan.descriptors != len(plan.runs) * len(plan.src.layout.regions):
        return [Issue("descriptors", f"{plan.descriptors} given, runs × regions = "
                      f"{len(plan.runs) * len(plan.src.layout.regions)}")]
    return []


def _role_issues(plan: TransferPlan) -> list[Issue]:
    issues: list[Issue] = []
    if plan.src.worker == plan.dst.worker or plan.src.agent_name == plan.dst.agent_name:
        issues.append(Issue("dst.worker", "source and destination are the same worker"))
    wanted = plan.dst.worker if plan.mode == "READ" else plan.src.worker
    if plan.initiator != wanted:
        issues.append(Issue("initiator", f"{plan.mode} is posted by {wanted!r}, "
                            f"not {plan.initiator!r}"))
    for side in ("src", "dst"):
        try:
            binascii.a2b_base64(getattr(plan, side).agent_metadata_b64.encode("ascii"),
                                strict_mode=True)
        except (binascii.Error, UnicodeEncodeError):
            issues.append(Issue(f"{side}.agent_metadata_b64", "not base64"))
    return issues


def plan_issues(plan: TransferPlan) -> list[Issue]:
    """Every rule the plan breaks (empty when it is executable)."""
    issues = layout_issues(plan.src.layout, "src.layout")
    issues += layout_issues(plan.dst.layout, "dst.layout")
    issues += _compat_issues(plan.src.layout, plan.dst.layout)
    if len(plan.src_blocks) != len(plan.dst_blocks):
        issues.append(Issue("dst_blocks", f"{len(plan.dst_blocks)} destination blocks for "
                            f"{len(plan.src_blocks)} source blocks (mismatched lengths)"))
    if not plan.src_blocks:
        issues.append(Issue("src_blocks", "no blocks to move (zero-length transfer)"))
    if plan.block_hashes and len(plan.block_hashes) != len(plan.dst_blocks):
        issues.append(Issue("block_hashes", f"{len(plan.block_hashes)} hashes for "
                            f"{len(plan.dst_blocks)} moved blocks (mismatched lengths)"))
    issues += _block_issues(plan.src_blocks, plan.src.layout.num_blocks, "src_blocks")
    issues += _block_issues(plan.dst_blocks, plan.dst.layout.num_blocks, "dst_blocks")
    issues += _role_issues(plan)
    if not issues:
        issues += _run_issues(plan)
        if plan.total_bytes != len(plan.src_blocks) * plan.src.layout.block_bytes:
            issues.append(Issue("total_bytes", "does not match blocks × block bytes"))
    return issues


def validate_plan(plan: TransferPlan, *, local_worker: str | None = None,
                  epochs: Mapping[str, int] | None = None) -> None:
    """Raise :class:`ValidationError` unless ``plan`` is safe to hand to NIXL.

    ``local_worker`` (sidecar side) must be one of the plan's endpoints; ``epochs`` maps
    worker names to their current registration epoch: an endpoint built against another
    epoch is stale (the worker restarted and its memory moved).
    """
    issues = plan_issues(plan)
    if local_worker is not None and local_worker not in (plan.src.worker, plan.dst.worker):
        issues.append(Issue("initiator", f"plan is not for worker {local_worker!r}"))
    for side in ("src", "dst"):
        end = getattr(plan, side)
        current = (epochs or {}).get(end.worker)
        if current is not None and current != end.epoch:
            issues.append(Issue(f"{side}.epoch", f"stale plan: built for epoch {end.epoch} of "
                                f"{end.worker!r}, current epoch is {current}"))
    if issues:
        raise ValidationError(f"transfer plan {plan.plan_id!r}", issues)


def parse_plan(data: bytes | str | Mapping[str, Any], source: str = "<plan>") -> TransferPlan:
    """Parse and validate a plan from JSON; a wrong ``schema_version`` is named as such."""
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"not JSON: {exc}", Location(source), "a JSON object") from exc
    if not isinstance(data, Mapping):
        raise ParseError(f"got {type(data).__name__}", Location(source), "a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ParseError(f"unsupported schema_version {version!r}",
                         Location(source, path="schema_version"), f"{SCHEMA_VERSION}")
    try:
        plan = TransferPlan.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(source, [Issue(".".join(map(str, err["loc"])) or "plan",
                                             err["msg"]) for err in exc.errors()]) from exc
    validate_plan(plan)
    return plan
