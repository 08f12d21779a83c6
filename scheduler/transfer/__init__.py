"""KV transfer planning: plain-data plans a sidecar executes with NIXL (no NIXL here)."""

from scheduler.transfer.build import build_plan, coalesce, descriptor_count
from scheduler.transfer.hints import hints_for_tier, hints_for_workers
from scheduler.transfer.plan import (
    SCHEMA_VERSION,
    BlockRun,
    KvLayout,
    KvRegion,
    Lease,
    PlanEndpoint,
    TransferJob,
    TransferPlan,
    TransferRecord,
    TransferReport,
    TransportHints,
    WorkerRegistration,
)
from scheduler.transfer.validate import parse_plan, validate_plan

__all__ = [
    "SCHEMA_VERSION",
    "BlockRun",
    "KvLayout",
    "KvRegion",
    "Lease",
    "PlanEndpoint",
    "TransferJob",
    "TransferPlan",
    "TransferRecord",
    "TransferReport",
    "TransportHints",
    "WorkerRegistration",
    "build_plan",
    "coalesce",
    "descriptor_count",
    "hints_for_tier",
    "hints_for_workers",
    "parse_plan",
    "validate_plan",
]
