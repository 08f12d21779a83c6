"""Plain-data models of KV transfers: worker registration, KV layout, transfer plan.

Nothing here imports NIXL: a plan is versioned JSON (``schema_version`` 1) that a
sidecar in any language can execute (see docs/transfers.md for the field-by-field
schema). Addresses and sizes are plain integers, block ids index a worker's KV pool.

Layouts (:class:`KvLayout`):

* ``block_major`` — one region; block ``i`` is ``block_bytes`` contiguous bytes at
  ``base_addr + i * block_bytes`` (SGLang-style paged pools, one tensor).
* ``per_layer`` — several regions (e.g. layer × K/V); each holds ``num_blocks`` slots of
  its own ``block_bytes``; block ``i`` is the ``i``-th slot of *every* region (vLLM).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from topology.tiers import Tier

#: Version of the plan wire format; bump on any incompatible change.
SCHEMA_VERSION: Literal[1] = 1

MemType = Literal["DRAM", "VRAM"]
#: READ: the decode side pulls (vLLM); WRITE: the prefill side pushes (SGLang).
Mode = Literal["READ", "WRITE"]
LayoutKind = Literal["block_major", "per_layer"]
Role = Literal["prefill", "decode", "both"]
#: How the target learns that the data moved: a NIXL notification from the initiator,
#: or a ``complete`` job from the scheduler after the initiator's report.
Notify = Literal["nixl", "scheduler"]

Name = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:@/-]+$")]
Address = Annotated[int, Field(ge=0, le=(1 << 64) - 1)]
BlockId = Annotated[int, Field(ge=0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KvRegion(_Frozen):
    """One registered stretch of KV memory holding one slot per block."""

    name: str = Field(default="kv", max_length=128, description="e.g. 'layer3.k'")
    base_addr: Address
    block_bytes: int = Field(gt=0, description="bytes of one block's slot in this region")


#: Labels a report's ``tier`` may carry.
TIER_LABELS = frozenset(tier.label for tier in Tier)

#: Largest KV pool a worker may register: the scheduler keeps per-block state, so an
#: unbounded count would let one registration exhaust its memory (found by fuzzing).
MAX_POOL_BLOCKS = 1 << 20


class KvLayout(_Frozen):
    """Where a worker's KV blocks live in memory."""

    kind: LayoutKind = "block_major"
    num_blocks: int = Field(gt=0, le=MAX_POOL_BLOCKS, strict=True,
                            description="blocks in the pool (the scheduler tracks each)")
    regions: tuple[KvRegion, ...] = Field(min_length=1, max_length=4096)

    @property
    def block_bytes(self) -> int:
        """Bytes of one whole block (all regions together)."""
        return sum(region.block_bytes for region in self.regions)

    @property
    def total_bytes(self) -> int:
        """Bytes of the whole pool."""
        return self.block_bytes * self.num_blocks

    def region_span(self, index: int) -> tuple[int, int]:
        """``(start, end)`` addresses of region ``index`` (end exclusive)."""
        region = self.regions[index]
        return region.base_addr, region.base_addr + region.block_bytes * self.num_blocks


class WorkerRegistration(_Frozen):
    """What a worker (one serving engine instance) tells the scheduler once."""

    name: Name
    agent_name: Name = Field(description="NIXL agent name (unique in the cluster)")
    agent_metadata_b64: str = Field(min_length=1, max_length=1 << 20,
                                    description="get_agent_metadata(), base64")
    mem_type: MemType = "DRAM"
    device_id: int = Field(default=0, ge=0)
    layout: KvLayout
    model: str | None = None
    role: Role = "both"
    host: str = Field(default="localhost", max_length=256)
    gpus: tuple[str, ...] = Field(default=(), description="fabric GPU names, e.g. 'h0/gpu3'")
    sidecar_url: str | None = Field(default=None, max_length=1024,
                                    description="how to reach the sidecar, if it listens")
    block_tokens: int | None = Field(
        default=None, ge=1, le=1 << 16,
        description="the engine's KV block size in tokens: the router hashes this model's "
                    "prompts into blocks of this size (None: the service's setting)")


class Lease(_Frozen):
    """A worker's registration lease: renew with a heartbeat before ``expires_at``."""

    worker: str
    epoch: int = Field(ge=1, description="grows on every (re-)registration of the name")
    ttl_s: float = Field(gt=0)
    expires_at: float


class PlanEndpoint(_Frozen):
    """One side of a transfer as the executing sidecar needs to see it."""

    worker: Name
    agent_name: Name
    agent_metadata_b64: str = Field(min_length=1, max_length=1 << 20)
    epoch: int = Field(ge=1, description="registration epoch the plan was built against")
    mem_type: MemType
    device_id: int = Field(ge=0)
    layout: KvLayout


class BlockRun(_Frozen):
    """``count`` blocks contiguous on both sides: src ``src_start…``, dst ``dst_start…``."""

    src_start: BlockId
    dst_start: BlockId
    count: int = Field(gt=0)


class TransportHints(_Frozen):
    """How the transport should be set up for this path, derived from the fabric tier."""

    tier: str = Field(description="topology tier label, e.g. 'same_leaf'")
    ucx_tls: tuple[str, ...] = Field(description="UCX transport families, UCX_TLS order")
    cuda_ipc: bool = Field(description="same-host GPU memory may use cuda_ipc")
    src_net_device: str | None = Field(default=None, description="UCX device, 'mlx5_0:1'")
    dst_net_device: str | None = None


class TransferPlan(_Frozen):
    """A complete, executable description of one KV transfer (schema version 1)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    plan_id: Name = Field(description="unique per request; also the notification tag")
    notif_tag: str = Field(min_length=1, max_length=256)
    notify: Notify = Field(default="nixl", description="how the target learns of completion")
    mode: Mode
    initiator: Name = Field(description="worker whose sidecar posts the NIXL request")
    src: PlanEndpoint
    dst: PlanEndpoint
    src_blocks: tuple[BlockId, ...] = Field(min_length=1)
    dst_blocks: tuple[BlockId, ...] = Field(min_length=1)
    runs: tuple[BlockRun, ...] = Field(min_length=1)
    mem_type: MemType
    total_bytes: int = Field(gt=0)
    descriptors: int = Field(gt=0, description="descriptors after merging runs")
    hints: TransportHints
    deadline_s: float = Field(gt=0, le=3600, description="seconds each side waits at most")
    not_after: float = Field(gt=0, description="unix time: no side posts or waits past it")
    block_hashes: tuple[int, ...] = Field(
        default=(), description="prefix-chain hashes of the moved blocks, in dst_blocks "
                                "order (empty when unknown); the destination announces them "
                                "as KV events once the bytes landed")

    @property
    def target(self) -> str:
        """The worker that does not post the request (it is notified)."""
        return self.dst.worker if self.initiator == self.src.worker else self.src.worker

    def epoch_of(self, worker: str) -> int:
        """The registration epoch of side ``worker`` the plan was built against."""
        return self.src.epoch if worker == self.src.worker else self.dst.epoch


def passive_target(plan: TransferPlan) -> bool:
    """True when ``plan``'s target waits for nothing: a READ told through the scheduler
    (the source serves the read from registered memory). It gets no ``await`` job, only
    ``complete`` (with its blocks) or ``abort`` (with the plan) once the transfer ended,
    and sends no report."""
    return plan.notify == "scheduler" and plan.initiator == plan.dst.worker


JobKind = Literal["execute", "await", "abort", "complete"]


class TransferJob(_Frozen):
    """What a sidecar receives from the job channel.

    ``execute``: post the plan (this sidecar is the initiator); ``await``: wait for the
    plan's completion (this sidecar is the target, unless it is passive:
    :func:`passive_target`); ``complete``: the initiator reported success (plans with
    ``notify: scheduler``; a passive target gets its ``blocks``, which it may reuse);
    ``abort``: stop waiting for ``plan_id``, the transfer failed elsewhere or expired
    (``reason`` says why; a passive target gets the ``plan``). ``complete`` and ``abort``
    carry the receiving worker's registration ``epoch`` the plan was built against: a
    sidecar registered again since drops them (its blocks started free).
    """

    kind: JobKind
    plan_id: str
    plan: TransferPlan | None = None
    reason: str | None = None
    blocks: tuple[BlockId, ...] | None = Field(
        default=None, description="complete, passive target: its blocks the transfer read")
    epoch: int | None = Field(
        default=None, ge=1, description="complete, abort: the registration epoch of the "
        "worker it is for that the plan was built against (None: not said)")


Outcome = Literal["ok", "failed", "timeout", "rejected", "aborted"]


class TransferReport(_Frozen):
    """One sidecar's account of one transfer."""

    plan_id: str
    worker: str
    role: Literal["initiator", "target"]
    outcome: Outcome
    bytes: int = Field(default=0, ge=0)
    descriptors: int = Field(default=0, ge=0)
    duration_s: float = Field(default=0.0, ge=0)
    gb_per_s: float = Field(default=0.0, ge=0)
    tier: str = Field(default="", description="a topology tier label, or empty")
    error: str | None = None
    verified: bool | None = Field(default=None, description="destination bytes checked")
    recompute: bool = Field(default=False, description="decode side must recompute")
    received_at: float | None = Field(
        default=None, description="when the sidecar received the job: its host's wall "
        "clock (time.time), like the record's times (exactly comparable on one host)")
    started_at: float | None = Field(
        default=None, description="when the sidecar created the NIXL request (same "
        "clock); it completed ``duration_s`` later")

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, value: str) -> str:
        if value and value not in TIER_LABELS:
            raise ValueError(f"unknown tier {value!r}; expected one of "
                             f"{', '.join(sorted(TIER_LABELS))} or empty")
        return value


#: ``expired``: nobody reported an outcome by the plan's deadline (plus a grace).
TransferState = Literal["pending", "done", "failed", "expired"]


class TransferRecord(_Frozen):
    """The scheduler's view of one transfer: its plan, state and the reports so far.

    ``recompute`` is set when the decode side must recompute the prefill instead of
    waiting for KV that will not arrive.
    """

    plan: TransferPlan
    state: TransferState = "pending"
    reports: tuple[TransferReport, ...] = ()
    recompute: bool = False
    error: str | None = None
    created_at: float = 0.0
    delivered_at: float | None = Field(default=None,
                                       description="when the initiator's job was handed out")
    finished_at: float | None = None
    src_blocks_taken: bool = Field(
        default=False, description="the scheduler took src_blocks from the source's free "
                                   "list for this transfer (routed): they go back when it ends")
    reservation_id: str | None = Field(
        default=None, description="the route's load reservation: its part on the source "
                                  "worker ends with the transfer")
    dst_released: bool = Field(
        default=False, description="the destination's request ended and its blocks of "
                                   "this (done) transfer went back to the free list")
