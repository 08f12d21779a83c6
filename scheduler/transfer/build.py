"""Build a :class:`TransferPlan` from a routing decision.

Only the blocks the decode side lacks travel (``cached_prefix`` leading blocks are
skipped); destination blocks come from the caller or from the decode worker's free
list; pairs contiguous on both sides are coalesced into runs, which is also what
NIXL's prepared path merges, so ``descriptors`` predicts the merged count.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

from scheduler.transfer.plan import (
    SCHEMA_VERSION,
    BlockRun,
    KvLayout,
    Mode,
    Notify,
    PlanEndpoint,
    TransferPlan,
    TransportHints,
    WorkerRegistration,
)
from scheduler.transfer.validate import validate_plan
from topology.errors import UnschedulableError

DEFAULT_DEADLINE_S = 10.0


def coalesce(src_blocks: Sequence[int], dst_blocks: Sequence[int]) -> tuple[BlockRun, ...]:
    """Merge pairs ``(src[i], dst[i])`` into runs contiguous on both sides, in order."""
    runs: list[BlockRun] = []
    start = 0
    for i in range(1, len(src_blocks) + 1):
        if (i == len(src_blocks) or src_blocks[i] != src_blocks[i - 1] + 1
                or dst_blocks[i] != dst_blocks[i - 1] + 1):
            runs.append(BlockRun(src_start=src_blocks[start], dst_start=dst_blocks[start],
                                 count=i - start))
            start = i
    return tuple(runs)


def descriptor_count(runs: Sequence[BlockRun], layout: KvLayout) -> int:
    """Descriptors after merging: one per run per region."""
    return len(runs) * len(layout.regions)


def allocate(free_blocks: Sequence[int], count: int, worker: str = "decode worker") -> list[int]:
    """Take ``count`` blocks from a free list, lowest ids first (keeps runs long)."""
    if count > len(free_blocks):
        raise UnschedulableError([f"{worker} has {len(free_blocks)} free KV blocks, "
                                  f"{count} needed"])
    return sorted(free_blocks)[:count]


def endpoint(reg: WorkerRegistration, epoch: int) -> PlanEndpoint:
    """The plan's view of a registered worker."""
    return PlanEndpoint(worker=reg.name, agent_name=reg.agent_name,
                        agent_metadata_b64=reg.agent_metadata_b64, epoch=epoch,
                        mem_type=reg.mem_type, device_id=reg.device_id, layout=reg.layout)


def build_plan(*, plan_id: str, src: WorkerRegistration, dst: WorkerRegistration,
               src_blocks: Sequence[int], dst_blocks: Sequence[int] | None = None,
               dst_free: Sequence[int] = (), cached_prefix: int = 0, mode: Mode = "READ",
               hints: TransportHints, epochs: tuple[int, int] = (1, 1),
               deadline_s: float = DEFAULT_DEADLINE_S,
               not_after: float | None = None, notify: Notify | None = None,
               block_hashes: Sequence[int] = ()) -> TransferPlan:
    """Plan moving ``src_blocks[cached_prefix:]`` from ``src`` to ``dst``.

    ``dst_blocks`` (same length as ``src_blocks``; its first ``cached_prefix`` entries are
    ignored too) or, when omitted, blocks allocated from ``dst_free``. READ makes the
    decode (``dst``) sidecar the initiator, WRITE the prefill (``src``) one. The plan is
    validated before it is returned; ``epochs`` are the (src, dst) registration epochs;
    ``not_after`` (unix time, default now + ``deadline_s``) bounds every side's work.
    ``notify`` defaults by mode: READ tells the (prefill) target through the scheduler —
    it only frees blocks, and a NIXL notification would make the next request to that
    peer wait for its progress — while WRITE notifies the waiting decode side via NIXL.
    """
    moving = list(src_blocks[cached_prefix:])
    if not moving:
        raise UnschedulableError([f"{dst.name} already holds all {len(src_blocks)} blocks"])
    if dst_blocks is None:
        targets = allocate(dst_free, len(moving), dst.name)
    else:
        targets = list(dst_blocks[cached_prefix:])
    runs = coalesce(moving, targets) if len(moving) == len(targets) else ()
    plan = TransferPlan.model_construct(
        schema_version=SCHEMA_VERSION, plan_id=plan_id, notif_tag=plan_id, mode=mode,
        notify=notify or ("scheduler" if mode == "READ" else "nixl"),
        initiator=dst.name if mode == "READ" else src.name,
        src=endpoint(src, epochs[0]), dst=endpoint(dst, epochs[1]),
        src_blocks=tuple(moving), dst_blocks=tuple(targets), runs=runs,
        mem_type=src.mem_type, total_bytes=len(moving) * src.layout.block_bytes,
        descriptors=max(1, descriptor_count(runs, src.layout)), hints=hints,
        deadline_s=deadline_s,
        not_after=not_after if not_after is not None else time.time() + deadline_s,
        block_hashes=tuple(block_hashes[cached_prefix:]) if block_hashes else ())
    # model_construct skipped pydantic checks so that the rules below can report every
    # problem at once. Then pydantic checks the top-level fields (plan id, deadline,
    # hashes, …) once: the nested endpoints, runs and hints are instances that were
    # validated when built, so they are passed as they are, not dumped and re-read
    # (that round trip cost twice the rules).
    validate_plan(plan)
    return TransferPlan.model_validate(dict(plan))


def decode_metadata(b64: str) -> bytes:
    """NIXL metadata bytes from the registration's base64 text."""
    return base64.b64decode(b64.encode("ascii"), validate=True)


def encode_metadata(raw: bytes) -> str:
    """Base64 text for a registration from NIXL metadata bytes."""
    return base64.b64encode(raw).decode("ascii")
