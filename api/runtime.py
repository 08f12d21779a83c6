"""What one scheduler replica holds at run time, built at start-up from its settings.

Shared state (workers, leases, free blocks, jobs, transfers, load reservations, the
KV-event log, and the shared documents: topology feeds and fabric, the placement in
force, placement jobs) lives in the store: in memory for one process, in Redis when
several replicas serve one cluster. Each replica keeps its own prefix index, replicated from
the KV-event log (``docs/state.md`` has the benchmark behind that choice), and its own
telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from api.outages import Outage
from api.settings import Settings
from api.ui.decisions import RecentDecisions
from scheduler.prefix import PrefixIndex, parse_event
from scheduler.state.base import TransferStore
from scheduler.state.docs import MemoryDocs, SharedDocs
from scheduler.state.memory import MemoryStore
from scheduler.state.reservations import (
    KvEventLog,
    LoadStore,
    MemoryLoads,
    StoreUnavailableError,
)
from scheduler.telemetry import DomainMapper, Telemetry, reference_figures, sample_from_record
from scheduler.telemetry.inflight import InflightLinks
from scheduler.transfer.coordinator import TransferCoordinator
from scheduler.transfer.plan import TransferRecord, WorkerRegistration
from topology.distance import DistanceModel
from topology.errors import InputError

log = logging.getLogger(__name__)
UNKNOWN_DOMAIN = "unknown"


@dataclass
class Runtime:
    """A replica's state and shared-store handles."""

    store: TransferStore
    events: KvEventLog
    loads: LoadStore
    prefix: PrefixIndex
    telemetry: Telemetry
    #: Topology, placement and placement jobs, as documents every replica reads.
    docs: SharedDocs = field(default_factory=MemoryDocs)
    distance: DistanceModel | None = None
    #: Other replicas share the store: KV events go through its log to all of them.
    replicated: bool = False
    worker_domains: dict[str, str] = field(default_factory=dict)
    worker_gpus: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Transfers this replica queued, per shared link, until they finish.
    inflight: InflightLinks = field(default_factory=InflightLinks)
    #: The newest routing results, by reference, for the operator's page (``/ui``).
    decisions: RecentDecisions = field(default_factory=RecentDecisions)
    #: This replica's name as the owner of the load reservations it makes: they end
    #: when it stops renewing its lease (:func:`sweep_reservations`).
    replica_id: str = field(default_factory=lambda: f"replica-{uuid.uuid4().hex[:12]}")
    _mapper: DomainMapper | None = None

    def remember_worker(self, reg: WorkerRegistration) -> None:
        """Note a worker's locality domain (for transfer telemetry labels)."""
        self.remember_gpus(reg.name, reg.gpus)

    def remember_gpus(self, worker: str, gpus: tuple[str, ...]) -> None:
        """Note the GPUs of a worker (or engine instance) for telemetry labels."""
        self.worker_gpus[worker] = gpus
        self.worker_domains[worker] = self._domain_of(gpus)

    def use_fabric(self, distance: DistanceModel) -> None:
        """Label transfers and calibrate against a new fabric (built from feeds, say)."""
        self.distance = distance
        self._mapper = DomainMapper(distance, level="pod")
        self.telemetry.use_reference(reference_figures(distance))
        self.worker_domains = {name: self._domain_of(gpus)
                               for name, gpus in self.worker_gpus.items()}

    def domain_of(self, gpus: tuple[str, ...]) -> str:
        """The locality domain (pod) of the first of ``gpus``, for telemetry labels."""
        return self._domain_of(gpus)

    def _domain_of(self, gpus: tuple[str, ...]) -> str:
        if self._mapper is None or not gpus:
            return UNKNOWN_DOMAIN
        try:
            return self._mapper.of_gpu(gpus[0])
        except Exception:  # a GPU unknown to the fabric: label it, do not fail the request
            return UNKNOWN_DOMAIN

    def record_transfer(self, record: TransferRecord) -> None:
        """Feed a finished transfer into metrics, drift detection and calibration."""
        self.inflight.done(record.plan.plan_id)
        sample = sample_from_record(
            record, lambda worker: self.worker_domains.get(worker, UNKNOWN_DOMAIN))
        if sample is not None:
            self.telemetry.record_transfer(sample)

    async def transfer_ended(self, record: TransferRecord) -> None:
        """A transfer ended (the coordinator calls this once per transfer, on the replica
        that ended it): count it, and end its route reservation's part on the prefill
        worker, whose work for the request is over, and the KV blocks it promised on the
        decode worker (landed, or never will)."""
        self.record_transfer(record)
        if record.reservation_id is not None:
            await self.loads.close_reservation(record.reservation_id,
                                               [record.plan.src.worker], landed=True,
                                               report=False)

    async def request_ended(self, record: TransferRecord) -> None:
        """The decode side's request that used ``record``'s KV ended: the rest of its
        route reservation ends too."""
        if record.reservation_id is not None:
            await self.loads.close_reservation(record.reservation_id, report=False)

    async def release_transfer(self, coordinator: TransferCoordinator, plan_id: str,
                               worker: str) -> bool:
        """``worker``'s request that used the transfer ``plan_id`` ended: its destination
        blocks go back to the free list (True: now) and the route's reservation ends."""
        released = await coordinator.release(plan_id, worker)
        await self.request_ended(await coordinator.store.get_transfer(plan_id))
        return released

    async def publish_events(self, events: list[Any]) -> None:
        """Share validated KV events with the other replicas (one process: nothing to do)."""
        if not self.replicated:
            return
        for event in events:
            await self.events.publish_kv_event(event.model_dump_json())


async def sweep_reservations(runtime: Runtime, lease_ttl_s: float) -> None:
    """Renew this replica's owner lease, then close reservations that ended (their
    lifetime passed, or their owner stopped renewing)."""
    await runtime.loads.renew_owner(runtime.replica_id, lease_ttl_s)
    for reservation in await runtime.loads.expire_reservations():
        log.info("reservation %s of %s expired; load given back: %s", reservation.id,
                 reservation.owner, ", ".join(i.worker for i in reservation.items))


def build_runtime(settings: Settings, distance: DistanceModel | None) -> Runtime:
    """The store and shared documents (memory or Redis), the local prefix index and
    telemetry."""
    if settings.redis_url:
        from scheduler.state.redis_docs import RedisDocs
        from scheduler.state.redis_store import RedisStore

        shared = RedisStore(settings.redis_url, prefix=settings.redis_prefix)
        runtime = _runtime(shared, shared, shared, distance)
        runtime.docs = RedisDocs(settings.redis_url, prefix=settings.redis_prefix)
        runtime.replicated = True
        return runtime
    memory = MemoryLoads()
    return _runtime(MemoryStore(), memory, memory, distance)


def _runtime(store: TransferStore, events: KvEventLog, loads: LoadStore,
             distance: DistanceModel | None) -> Runtime:
    reference = reference_figures(distance) if distance is not None else None
    runtime = Runtime(store=store, events=events, loads=loads, prefix=PrefixIndex(),
                      telemetry=Telemetry(reference=reference), distance=distance)
    if distance is not None:
        runtime._mapper = DomainMapper(distance, level="pod")
    return runtime


async def replicate_kv_events(runtime: Runtime, block_ms: int) -> None:
    """Apply the shared KV-event log to this replica's prefix index, forever.

    Events this replica applied on receipt come back here too; the index ignores
    sequence numbers it has seen, so applying twice is harmless.
    """
    last_id = "0"  # from the start: a restarted replica rebuilds its index from the log
    outage = Outage("reading the KV-event log", log)
    while True:
        try:
            batch, last_id = await runtime.events.kv_events_since(last_id, block_ms)
        except StoreUnavailableError as exc:
            outage.failed(exc)
            await asyncio.sleep(1.0)
            continue
        outage.ok()
        for text in batch:
            try:
                runtime.prefix.apply(parse_event(text, source="kv-event log"))
            except InputError as exc:
                log.warning("skipping a bad KV event from the log: %s", exc)
