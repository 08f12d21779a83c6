"""What telemetry ingests: one measured transfer, and how to build it.

:class:`TransferSample` is deliberately smaller than the transfer planner's
:class:`~scheduler.transfer.plan.TransferReport`: a tier, the two locality domains, the
bytes, the seconds, whether it succeeded and when. :func:`sample_from_record` builds
one from the planner's record of a finished transfer; :class:`DomainMapper` turns GPU
names into locality domains at a chosen level (rack, pod or zone), which is what
bounds the domain-pair label cardinality at the source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scheduler.transfer.plan import TransferRecord, TransferReport
from topology.distance import DistanceModel
from topology.errors import InputError
from topology.tiers import Tier

DomainLevel = Literal["rack", "pod", "zone"]
TIER_LABELS: tuple[str, ...] = tuple(t.label for t in Tier)


class TransferSample(BaseModel):
    """One completed (or failed) KV transfer as telemetry sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: str = Field(description="topology tier label, e.g. 'same_pod'")
    src_domain: str = Field(min_length=1, max_length=256)
    dst_domain: str = Field(min_length=1, max_length=256)
    nbytes: int = Field(ge=0)
    seconds: float = Field(ge=0, allow_inf_nan=False)
    ok: bool = True
    expired: bool = Field(default=False, description="ended with no outcome reported")
    ts: float = Field(default=0.0, allow_inf_nan=False, description="unix time of completion")

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, value: str) -> str:
        # Tiers are a closed set: an unknown label would be an unbounded metric label.
        if value not in TIER_LABELS:
            raise ValueError(f"unknown tier {value!r}; expected one of {', '.join(TIER_LABELS)}")
        return value

    @property
    def bytes_per_s(self) -> float:
        """Effective bandwidth (0 when the duration is 0)."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


class DomainMapper:
    """GPU name → locality domain name at one level (``rack``, ``pod`` or ``zone``).

    A fabric without pods maps ``pod`` to the zone, so the mapping never produces
    more distinct names than the level asks for.
    """

    def __init__(self, distance: DistanceModel, level: DomainLevel = "pod") -> None:
        """Map through ``distance``'s locality table."""
        if level not in ("rack", "pod", "zone"):
            raise InputError(f"unknown domain level {level!r}; expected rack, pod or zone")
        self.distance, self.level = distance, level
        self._cache: dict[str, str] = {}

    def of_gpu(self, gpu: str) -> str:
        """Domain of one GPU (``host/gpuN``)."""
        found = self._cache.get(gpu)
        if found is None:
            where = self.distance.locality(gpu)
            found = {"rack": where.rack, "pod": where.pod or where.zone,
                     "zone": where.zone}[self.level]
            self._cache[gpu] = found
        return found


def sample_from_report(report: TransferReport, *, src_domain: str, dst_domain: str,
                       ts: float = 0.0, tier: str | None = None) -> TransferSample:
    """A sample from one sidecar report (``outcome == 'ok'`` counts as success).

    ``tier`` overrides the report's own; a report without either is refused.
    """
    label = tier or report.tier
    if not label:
        raise InputError(f"transfer report {report.plan_id!r} names no tier")
    return TransferSample(tier=label, src_domain=src_domain,
                          dst_domain=dst_domain, nbytes=report.bytes,
                          seconds=report.duration_s, ok=report.outcome == "ok", ts=ts)


def sample_from_record(record: TransferRecord, domain_of: Callable[[str], str],
                       ts: float | None = None) -> TransferSample | None:
    """A sample from a finished transfer record, ``None`` while it is still pending.

    The initiator's report is used (it timed the NIXL request); the target's when the
    initiator never reported. ``domain_of`` maps a worker name to its locality domain
    (e.g. ``lambda w: mapper.of_gpu(registration[w].gpus[0])``). The tier falls back
    to the plan's transport hint when the report leaves it empty.
    """
    if record.state == "pending":
        return None
    plan = record.plan
    when = ts if ts is not None else (record.finished_at or record.created_at)
    domains = {"src_domain": domain_of(plan.src.worker), "dst_domain": domain_of(plan.dst.worker)}
    if not record.reports:  # failed or expired with no side reporting
        return TransferSample(tier=plan.hints.tier, nbytes=0, seconds=0.0, ok=False,
                              expired=record.state == "expired", ts=when, **domains)
    report = next((r for r in record.reports if r.role == "initiator"), record.reports[-1])
    sample = sample_from_report(report, ts=when, tier=report.tier or plan.hints.tier, **domains)
    if record.state != "done":
        sample = sample.model_copy(update={"ok": False, "expired": record.state == "expired"})
    return sample
