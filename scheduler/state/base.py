"""The store interface shared by scheduler replicas: workers, leases, free blocks, jobs.

Every method is ``async`` so that a networked store (Redis) implements the same
protocol as :class:`~scheduler.state.memory.MemoryStore`. Times come from an injected
clock (seconds, monotonic within one store) so lease expiry is testable without
sleeping; the default is wall time (``time.time``), the clock transfer plans' deadlines
(``not_after``) and records are stamped with. Errors: an unknown or expired worker raises
:class:`~topology.errors.NotFoundError`; too few free blocks raises
:class:`~topology.errors.UnschedulableError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from scheduler.state.reservations import LoadStore, WorkerLoad
from scheduler.transfer.plan import Lease, TransferJob, TransferRecord, WorkerRegistration
from topology.errors import ConflictError

Clock = Callable[[], float]


class WorkerEntry(BaseModel):
    """A registered worker and its current lease."""

    model_config = ConfigDict(frozen=True)

    registration: WorkerRegistration
    lease: Lease
    free_blocks: int
    draining: bool = False
    """Its sidecar is draining (``POST /v1/sidecars/NAME/drain``): no new transfer may
    use it; cleared when it registers again."""


class WorkerDrainingError(ConflictError):
    """A new transfer would use a worker whose sidecar is draining (409)."""

    def __init__(self, name: str) -> None:
        self.worker = name
        super().__init__(f"worker {name!r} is draining: it takes no new transfers "
                         "(its sidecar is shutting down; it takes new ones once it "
                         "registers again)")


class WorkerRegisteredAgainError(ConflictError):
    """A new transfer's plan was built against an earlier registration of a worker (it
    registered again between the step that took its blocks and the one storing the
    transfer): 409; its blocks of that registration are gone with it."""

    def __init__(self, name: str, planned: int) -> None:
        self.worker = name
        super().__init__(f"worker {name!r} registered again since the transfer was planned "
                         f"against its epoch {planned}: plan it again")


@dataclass(frozen=True, slots=True)
class BlockGrant:
    """A live worker as one :meth:`TransferStore.take_blocks` step saw it (free blocks
    counted after the step) and the blocks that step took from it."""

    entry: WorkerEntry
    blocks: tuple[int, ...]


class TransferStore(Protocol):
    """Shared scheduler state for transfers (memory for one replica, Redis for many)."""

    async def register_worker(self, reg: WorkerRegistration, ttl_s: float) -> Lease:
        """Add or replace a worker; a new epoch, a fresh lease, every block free."""

    async def heartbeat(self, name: str) -> Lease:
        """Extend a live worker's lease by its TTL."""

    async def remove_worker(self, name: str) -> bool:
        """Forget a worker and its queued jobs; False when it was not registered."""

    async def get_worker(self, name: str) -> WorkerEntry:
        """A live worker by name."""

    async def drain_worker(self, name: str) -> WorkerEntry:
        """Mark a live worker draining (idempotent; kept across heartbeats, cleared by
        :meth:`register_worker`): :meth:`take_blocks` refuses it from now on."""

    async def list_workers(self) -> list[WorkerEntry]:
        """Every live worker, by name."""

    async def list_with_loads(self, loads: LoadStore
                              ) -> tuple[list[WorkerEntry], dict[str, WorkerLoad]]:
        """``list_workers()`` and ``loads.loads()`` together: one read where this store
        holds the loads too (Redis), so the route path pays one round trip, not two."""

    async def expire(self) -> list[str]:
        """Remove workers whose lease ran out and apply due delayed releases; return the
        names of the removed workers."""

    async def allocate_blocks(self, name: str, count: int) -> list[int]:
        """Take ``count`` free blocks of a worker (lowest ids first)."""

    async def take_blocks(self, counts: Mapping[str, int]) -> dict[str, BlockGrant]:
        """Every named worker's entry, taking ``counts[name]`` free blocks of each (lowest
        ids first, ``0``: none) in one step, all or nothing: nothing is taken when one
        worker is not live (:class:`NotFoundError`), is draining
        (:class:`WorkerDrainingError`) or has too few free blocks
        (:class:`UnschedulableError`). Checked in the mapping's order."""

    async def claim_blocks(self, name: str, blocks: Sequence[int]) -> None:
        """Mark given blocks of a worker as used (explicit destination blocks)."""

    async def release_blocks(self, name: str, blocks: Sequence[int],
                             epoch: int | None = None) -> bool:
        """Return blocks to a worker's free list (an ended transfer, evicted KV); True
        when returned. With ``epoch``, only while the worker is at that registration
        epoch: a release meant for an earlier registration would free blocks that the
        new one (whose blocks all started free) has handed out since."""

    async def release_blocks_at(self, name: str, blocks: Sequence[int], when: float,
                                epoch: int | None = None) -> None:
        """Return blocks to the free list once the clock reaches ``when`` (quarantine);
        ``epoch`` as in :meth:`release_blocks`, checked when the release is due."""

    async def put_job(self, name: str, job: TransferJob) -> None:
        """Queue a job for a worker's sidecar and wake its long-poll."""

    async def wait_jobs(self, name: str, timeout_s: float) -> list[TransferJob]:
        """Queued jobs of a worker, waiting up to ``timeout_s`` for the first one."""

    async def wait_job_texts(self, name: str, timeout_s: float) -> list[str]:
        """As :meth:`wait_jobs`, each job as the JSON text it was queued as (what a
        job stream writes to its sidecar as it is, without parsing it again)."""

    async def start_transfer(self, record: TransferRecord,
                             jobs: Sequence[tuple[str, TransferJob]]) -> None:
        """Store a new pending record and queue its ``(worker, job)`` pairs in one step,
        all or nothing: :class:`~topology.errors.ConflictError` when its plan id exists;
        then both sides of its plan are checked as :meth:`take_blocks` left them, since
        another call may have come between the two: :class:`NotFoundError` when one is
        not live, :class:`WorkerRegisteredAgainError` when it is at another epoch than the
        plan's, :class:`WorkerDrainingError` when it started draining; last,
        :class:`NotFoundError` when a job's worker is not live."""

    async def put_transfer(self, record: TransferRecord) -> None:
        """Store (insert or replace) a transfer record, keyed by its plan id."""

    async def read_transfer(self, plan_id: str) -> tuple[TransferRecord, int]:
        """A transfer record and its version (count of stores)."""

    async def replace_transfer(self, record: TransferRecord, version: int) -> int | None:
        """Store ``record`` only if its stored version is still ``version`` (compare and
        set); the new version, or None (nothing stored) when another store came first.
        :class:`NotFoundError` when there is no such record."""

    async def due_transfers(self, now: float, limit: int = 1000) -> list[str]:
        """Plan ids of pending transfers whose plan's ``not_after`` is ``now`` or earlier
        (oldest deadline first, at most ``limit``)."""

    async def get_transfer(self, plan_id: str) -> TransferRecord:
        """A transfer record by plan id."""

    async def wait_transfer(self, plan_id: str, timeout_s: float,
                            version: int) -> tuple[TransferRecord, int]:
        """The record once its version (count of stores) exceeds ``version``, or as is
        after ``timeout_s``; returns it with its current version."""

    async def transfers_of(self, name: str) -> list[TransferRecord]:
        """Pending transfers that have ``name`` on either side."""
