"""Engine instances in the service: the shared instance document, the registry that
follows the engines, and what they feed into routing and telemetry.

* The registered instances are one shared document (``instances``, in the same store as
  the topology: memory for one process, Redis for replicas), written by compare-and-set
  like the topology and followed by every replica (polled every ``shared_poll_s``). It
  records which instances were announced by a sidecar rather than declared by an
  operator: an announcement never overwrites a different operator declaration.
* Every replica runs its own :class:`~engines.registry.EngineRegistry`: it scrapes
  every engine and subscribes to every engine's KV events itself (ZMQ publishers serve
  any number of subscribers), so no replica depends on another for its prefix index.
  The centralised bound socket (``kv_events.mode: bind``) serves the replica the
  engines connect to; with several replicas use connect mode.
* An instance gets a load capacity in the shared load store when it appears (routes
  reserve load on it like on any worker) and loses it when it goes.
* NIXL transfer totals that grew on a decode engine become per-tier transfer samples
  (``toposched_transfer_latency_seconds{tier}``, transfer drift alerts, calibration):
  each new transfer takes the oldest handoff noted for that engine
  (:mod:`engines.handoffs`: by ``POST /v1/route`` when it routes a pair of instances, by
  the gateway just before its decode leg carries the prefill's KV); the mean time and
  bytes of the scrape window are used, as the engine publishes histograms, not single
  transfers. A gateway request's transfer also goes into the gateway's ``nixl_transfer``
  phase and KV bytes by tier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.load import DEFAULT_MAX_TOKENS
from api.outages import Outage
from api.runtime import UNKNOWN_DOMAIN, Runtime
from api.settings import Settings
from engines.handoffs import HandoffLedger
from engines.instance import EngineInstance, InstanceDocument, load_instances, set_issues
from engines.live import DEFAULT_MAX_REQUESTS
from engines.registry import EngineRegistry, NixlDelta, RegistrySettings
from scheduler.router.router import Decision
from scheduler.state.docs import ABSENT
from scheduler.state.reservations import StoreUnavailableError
from scheduler.telemetry import TransferSample
from topology.errors import ConflictError, NotFoundError, ValidationError

log = logging.getLogger(__name__)
#: Name of the shared instance document.
INSTANCES = "instances"
#: Compare-and-set attempts of one write before it gives up (409).
MAX_WRITE_TRIES = 16
Source = Literal["operator", "sidecar"]


class SharedInstances(BaseModel):
    """The shared document: the instances, and the names a sidecar announced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    instances: tuple[EngineInstance, ...] = ()
    announced: tuple[str, ...] = Field(default=(), description="names a sidecar announced")

    def named(self, name: str) -> EngineInstance | None:
        """The instance called ``name``, if any."""
        return next((i for i in self.instances if i.name == name), None)

    def without(self, name: str) -> SharedInstances:
        """This document without ``name``."""
        return SharedInstances(instances=tuple(i for i in self.instances if i.name != name),
                               announced=tuple(n for n in self.announced if n != name))


Edit = Callable[[SharedInstances], SharedInstances | None]


class EngineFeeds:
    """The service's engine instances (see the module docstring)."""

    def __init__(self, runtime: Runtime, settings: Settings) -> None:
        """Build the registry from ``settings`` (the start-up document is read now, so a
        bad one stops the service before it serves)."""
        self.runtime = runtime
        self.poll_s = settings.shared_poll_s
        self.registry = EngineRegistry(
            runtime.prefix.apply, runtime.prefix.remove_worker, RegistrySettings(
                scrape_interval_s=settings.engine_scrape_interval_s,
                stale_after_s=settings.engine_stale_after_s or settings.lease_ttl_s,
                timeout_s=settings.engine_scrape_timeout_s,
                bind_endpoint=settings.kv_events_bind),
            on_nixl=self._nixl)
        self.handoffs = HandoffLedger()
        self.unattributed: dict[str, float] = {}
        self.document = SharedInstances()
        self._seen = ABSENT
        self._seed: InstanceDocument | None = (load_instances(settings.instances)
                                               if settings.instances else None)
        self._lock = asyncio.Lock()

    # -- lifetime ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start following the engines; the start-up document is shared unless the store
        holds one already (another replica's, or one edited since)."""
        await self.registry.start()
        seed = self._seed
        try:
            if seed is not None:  # shared only when the store holds no instance yet
                await self._edit(lambda doc: None if doc.instances or doc.announced else
                                 SharedInstances(instances=seed.instances))
            await self.refresh()
        except StoreUnavailableError as exc:
            log.warning("instance document unavailable at start-up: %s", exc.detail)

    async def close(self) -> None:
        """Stop following the engines."""
        await self.registry.close()

    async def follow(self) -> None:
        """Adopt instance changes made through other replicas, forever."""
        outage = Outage("following the instance document", log)
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except Exception as exc:  # one bad round must not stop following
                outage.failed(exc)
            else:
                outage.ok()

    async def refresh(self) -> None:
        """Load the shared document if it changed since this replica last looked."""
        async with self._lock:
            version = (await self.runtime.docs.versions([INSTANCES]))[INSTANCES]
            if version == self._seen:
                return
            found = await self.runtime.docs.get(INSTANCES)
            document = (SharedInstances.model_validate_json(found[1]) if found
                        else SharedInstances())
            await self._adopt(document, found[0] if found else ABSENT)

    async def _adopt(self, document: SharedInstances, version: int) -> None:
        before = {i.name for i in self.document.instances}
        self.document, self._seen = document, version
        self.registry.replace_all(document.instances)
        loads = self.runtime.loads
        for instance in document.instances:
            await loads.set_capacity(instance.name, DEFAULT_MAX_TOKENS,
                                     instance.max_requests or DEFAULT_MAX_REQUESTS)
            self.runtime.remember_gpus(instance.name, instance.gpu_names)
        for name in before - {i.name for i in document.instances}:
            await loads.drop_load(name)
            self.handoffs.forget(name)

    # -- edits -------------------------------------------------------------------------

    async def put(self, instance: EngineInstance, source: Source = "operator") -> bool:
        """Register or replace one instance; True when it is new. A sidecar's
        announcement may not replace a different operator declaration (409)."""
        created = False

        def edit(doc: SharedInstances) -> SharedInstances | None:
            nonlocal created
            old = doc.named(instance.name)
            created = old is None
            announced = instance.name in doc.announced
            if source == "sidecar" and old is not None and not announced and old != instance:
                raise ConflictError(f"instance {instance.name!r} is declared by an operator "
                                    "with other settings; the announcement is refused",
                                    ["operator", "sidecar"])
            if old == instance and announced == (source == "sidecar"):
                return None
            rest = doc.without(instance.name)
            return SharedInstances(
                instances=(*rest.instances, instance),
                announced=(*rest.announced, *([instance.name] if source == "sidecar" else [])))

        await self._edit(edit)
        return created

    async def remove(self, name: str) -> None:
        """Deregister an instance (404 when unknown)."""
        def edit(doc: SharedInstances) -> SharedInstances | None:
            if doc.named(name) is None:
                raise NotFoundError("instance", name, "GET /v1/instances lists them")
            return doc.without(name)
        await self._edit(edit)

    async def replace(self, instances: Sequence[EngineInstance]) -> None:
        """Make the registered set exactly ``instances`` (all declared by an operator)."""
        await self._edit(lambda doc: SharedInstances(instances=tuple(instances)))

    async def _edit(self, edit: Edit) -> None:
        """Apply ``edit`` to the latest document and write it by compare-and-set."""
        docs = self.runtime.docs
        async with self._lock:
            for _ in range(MAX_WRITE_TRIES):
                found = await docs.get(INSTANCES)
                version = found[0] if found else ABSENT
                latest = SharedInstances.model_validate_json(found[1]) if found else \
                    SharedInstances()
                edited = edit(latest)
                if edited is None:
                    return
                _check(edited)
                written = await docs.put(INSTANCES, edited.model_dump_json(), version)
                if written is not None:
                    await self._adopt(edited, written)
                    return
        raise ConflictError(f"the instance set changed {MAX_WRITE_TRIES} times during one "
                            "edit (other replicas are writing); retry")

    # -- routing and telemetry ---------------------------------------------------------

    def note(self, decision: Decision) -> None:
        """Remember a routed handoff between two instances (labels their NIXL figures)."""
        prefill, decode = decision.prefill.worker, decision.decode.worker
        if decision.mode == "disaggregated" and prefill != decode \
                and prefill in self.registry and decode in self.registry:
            self.handoffs.note(decode, prefill, decision.transfer.tier)

    def engine_driven(self, decision: Decision) -> bool:
        """Whether the decision's pair moves KV itself (both sides are engine instances)."""
        return decision.prefill.worker in self.registry and \
            decision.decode.worker in self.registry

    def _nixl(self, decode: str, delta: NixlDelta) -> None:
        count = int(delta.transfers + delta.failed)
        taken = self.handoffs.take(decode, count)
        missing = count - len(taken)
        if missing:
            self.unattributed[decode] = self.unattributed.get(decode, 0.0) + missing
        if not taken or delta.transfers <= 0:
            return
        seconds, nbytes = delta.seconds / delta.transfers, delta.bytes / delta.transfers
        now, ok_left = time.time(), int(delta.transfers)
        domains = self.runtime.worker_domains
        telemetry = self.runtime.telemetry
        for handoff in taken:
            ok = ok_left > 0
            telemetry.record_transfer(TransferSample(
                tier=handoff.tier, src_domain=domains.get(handoff.prefill, UNKNOWN_DOMAIN),
                dst_domain=domains.get(decode, UNKNOWN_DOMAIN), nbytes=int(nbytes),
                seconds=max(seconds, 0.0), ok=ok, ts=now))
            if ok and handoff.via == "gateway":
                telemetry.handoff.observe_nixl(handoff.tier, max(seconds, 0.0), int(nbytes))
            ok_left -= 1

    def render_metrics(self) -> str:
        """The registry's Prometheus families ('' without instances)."""
        if not self.registry.instances():
            return ""
        from engines.exposition import render  # prometheus_client: only once engines exist

        return render(self.registry, self.unattributed)


def _check(document: SharedInstances) -> None:
    """Set-level rules (unique names, reachable side channels, topics) by instance name."""
    issues = set_issues(document.instances, [i.name for i in document.instances])
    if issues:
        raise ValidationError("instances", issues)
