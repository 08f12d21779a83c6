"""Builders for transfer tests: registrations and plans with keyword defaults."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from scheduler.transfer.build import build_plan
from scheduler.transfer.hints import hints_for_tier
from scheduler.transfer.plan import (
    KvLayout,
    KvRegion,
    MemType,
    Mode,
    TransferPlan,
    WorkerRegistration,
)
from topology.tiers import Tier


def layout(*, num_blocks: int = 64, block_bytes: int = 4096, regions: int = 1,
           base: int = 0x7F00_0000_0000) -> KvLayout:
    """A dense layout: one region (block-major) or ``regions`` equal per-layer regions."""
    per = block_bytes // regions
    kind = "block_major" if regions == 1 else "per_layer"
    return KvLayout(kind=kind, num_blocks=num_blocks, regions=tuple(
        KvRegion(name=f"r{r}", base_addr=base + r * per * num_blocks, block_bytes=per)
        for r in range(regions)))


def registration(name: str = "prefill-0", *, mem_type: MemType = "DRAM",
                 gpus: Sequence[str] = (), host: str = "h0", **layout_kw: Any
                 ) -> WorkerRegistration:
    """A worker registration with fake (but well-formed) NIXL metadata."""
    return WorkerRegistration(
        name=name, agent_name=name,
        agent_metadata_b64=base64.b64encode(f"md-of-{name}".encode()).decode(),
        mem_type=mem_type, layout=layout(**layout_kw), host=host, gpus=tuple(gpus))


def plan(*, src_blocks: Sequence[int] = (0, 1, 2, 5), dst_blocks: Sequence[int] | None = None,
         mode: Mode = "READ", regions: int = 1, block_bytes: int = 4096,
         plan_id: str = "req-1", **kw: Any) -> TransferPlan:
    """A valid plan between two registrations (override fields with ``model_copy``)."""
    return build_plan(plan_id=plan_id,
                      src=registration("prefill-0", regions=regions, block_bytes=block_bytes),
                      dst=registration("decode-0", regions=regions, block_bytes=block_bytes,
                                       base=0x7E00_0000_0000),
                      src_blocks=src_blocks,
                      dst_blocks=dst_blocks if dst_blocks is not None else src_blocks,
                      mode=mode, hints=hints_for_tier(Tier.SAME_LEAF, "DRAM"), **kw)
