"""The sidecar process: register, heartbeat, read the job stream, execute, report, drain.

Threads (there is no event loop; NIXL never runs where one could be blocked):

* main — waits for SIGTERM/SIGINT, then drains and shuts down in order;
* ``jobs`` — reads the job stream and does the hot path itself: an ``execute`` job is
  validated, posted and driven to completion and reported on this thread, with no
  hand-off, while no other job is waiting and no other transfer of it is in flight;
  otherwise (or past ``--post-wait``) the transfer goes to the ``inflight`` thread and
  the next job is read and posted at once, up to ``--max-inflight`` transfers posted and
  not yet reported; as the passive target of a READ (``notify: scheduler``: no
  ``await``) it hands a ``complete`` (the blocks read) or ``abort`` (the plan) to the
  engine hook and reports nothing; an ``await`` of another plan told through the
  scheduler is only noted, and its ``complete`` (or ``abort``) job ends it here;
* ``inflight`` — checks the transfers handed to it in turn (one check each per round),
  and verifies and reports each as it completes;
* ``heartbeat`` — renews the lease at a third of its TTL, re-registers if it lapsed
  (until deregistered: a draining sidecar keeps its lease);
* ``progress`` — polls NIXL notifications every few ms, because the agent runs without
  NIXL's busy-spinning progress thread (docs/transfers.md);
* ``watchdog`` — one thread for every job's deadline: reports ``timeout`` for a wait
  nobody ended and for a NIXL call that never returned;
* executor pool — WRITE targets waiting for their NIXL notification.

Shutdown order: stop taking jobs → tell the scheduler this worker is draining (it hands
it no new transfer from then on) → let in-flight transfers finish (each bounded by its
deadline) → wait until no transfer of this worker from before the stop is pending (the
reads of a passive target) → deregister from the scheduler (its metadata stops being handed out) →
release peers and handles, deregister memory → write the final state file.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from scheduler.transfer.build import encode_metadata
from scheduler.transfer.plan import (
    Lease,
    Outcome,
    TransferJob,
    TransferPlan,
    TransferReport,
    WorkerRegistration,
    passive_target,
)
from scheduler.transfer.validate import validate_plan
from sidecar.announce import Announcer, load_announcement
from sidecar.client import JobStream, SchedulerClient
from sidecar.config import SidecarConfig, cpus_besides
from sidecar.engine import EngineHook, FakeEngine
from sidecar.errors import SchedulerUnavailableError, TransferError
from sidecar.nixl_adapter import NixlAdapter, Posted, XferResult
from sidecar.pool import KvPool
from topology.errors import Issue, NotFoundError, ToposchedError, ValidationError

log = logging.getLogger(__name__)
#: Progress polling: fast while notifications are about (a peer's next request waits
#: until this agent has acknowledged the last notification), slower while a WRITE target
#: waits for one or for a while after the last, and slowest otherwise (only READs told
#: through the scheduler, or nothing: the initiator's own checks drive its requests, a
#: passive READ target moves nothing itself; each poll wakes this process, ~0.1 ms of
#: CPU on a 2-vCPU host).
_HOT_INTERVAL_S = 0.0002
_IDLE_INTERVAL_S = 0.005
_QUIET_INTERVAL_S = 0.02
_HOT_WINDOW_S = 0.05
_WARM_WINDOW_S = 1.0
_SWITCH_INTERVAL_S = 0.0005
#: A job's report is forced this long after its deadline if NIXL never returned.
_WATCHDOG_GRACE_S = 0.5
#: How often the watchdog looks at the earliest deadline (no wake-up per job).
_WATCHDOG_TICK_S = 0.05
#: Draining: how often to ask the scheduler for this worker's pending transfers, and
#: how long the job stream must stay quiet after (the scheduler holds ``complete`` jobs
#: back up to 10 ms to write several at once).
_DRAIN_POLL_S = 0.05
_QUIET_S = 0.1


class Watchdog:
    """Deadlines of every job on one thread: ``arm`` a key with a time and a function,
    ``disarm`` it when the job ended; the function runs (on the watchdog thread) for
    keys still armed when their time came. Checked every ``tick_s``, so arming wakes
    nothing."""

    def __init__(self, stop: threading.Event, tick_s: float = _WATCHDOG_TICK_S) -> None:
        self._stop = stop
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._armed: dict[tuple[str, str], Callable[[], None]] = {}
        self._seq = itertools.count()

    def arm(self, key: tuple[str, str], when: float, fire: Callable[[], None]) -> None:
        """Run ``fire`` at ``when`` (monotonic) unless ``key`` is disarmed first."""
        with self._lock:
            self._armed[key] = fire
            heapq.heappush(self._heap, (when, next(self._seq), key))
            if len(self._heap) > 4 * len(self._armed) + 1024:  # drop disarmed entries
                self._heap = [item for item in self._heap if item[2] in self._armed]
                heapq.heapify(self._heap)

    def disarm(self, key: tuple[str, str]) -> bool:
        """Disarm ``key``; True when it was armed (whoever disarms it first wins)."""
        with self._lock:
            return self._armed.pop(key, None) is not None

    def armed(self) -> int:
        """Keys armed now."""
        with self._lock:
            return len(self._armed)

    def run(self) -> None:
        """Fire due keys until stopped (the ``watchdog`` thread)."""
        while not self._stop.wait(self._tick_s):
            self.fire_due(time.monotonic())

    def fire_due(self, now: float) -> None:
        """Run the functions of armed keys due at ``now``."""
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > now:
                    return
                key = heapq.heappop(self._heap)[2]
                fire = self._armed.get(key)
            if fire is not None:
                try:
                    fire()
                except Exception:  # one failing report must not stop the others
                    log.exception("watchdog of %s failed", key)


@dataclass
class _Handed:
    """A transfer the job thread handed to the ``inflight`` thread: still in flight
    (``posted``), or done and released (``result``), waiting for its report."""

    plan: TransferPlan
    deadline: float
    posted: Posted | None = None
    result: XferResult | None = None


def _nothing_waiting() -> bool:
    return False


class Sidecar:
    """One sidecar: a NIXL agent with a registered pool, serving the scheduler's jobs."""

    def __init__(self, config: SidecarConfig,
                 engine: Callable[[SidecarConfig], EngineHook] | None = None) -> None:
        """Build the engine (default: a fake engine over a fresh pool), register its pool."""
        self.config = config
        self.engine: EngineHook = (engine or _fake_engine)(config)
        self.engine.set_release(self._request_ended)
        self.pool = self.engine.pool
        #: The pool's layout, built once: every plan's own side is compared with it.
        self.layout = self.pool.layout()
        self.recompute: list[str] = []
        #: block id → the prefix hash it holds (announced to the index; replaced on reuse)
        self._prefix_of: dict[int, int] = {}
        self.adapter = NixlAdapter(config.name, progress_thread=config.progress_thread,
                                   ucx_devices=config.ucx_devices)
        self.adapter.register(self.pool.registration(), self.layout,
                              self.pool.mem_type, config.device_id)
        self.client = SchedulerClient(config.scheduler, token=config.token)
        self.stop = threading.Event()
        self.lease: Lease | None = None
        self.outcomes: Counter[str] = Counter()
        #: Jobs received by kind, and ``writes``: the scheduler's writes that carried them.
        self.jobs_received: Counter[str] = Counter()
        #: ``complete``/``abort`` jobs dropped: for an earlier registration epoch.
        self.stale_dropped = 0
        #: Whether the scheduler took this sidecar's drain (``POST .../drain``).
        self.drain_announced = False
        #: With ``--copy-cpu``: the CPUs of every thread but the job thread.
        self._other_cpus = None if config.copy_cpu is None else cpus_besides(config.copy_cpu)
        self._executor = ThreadPoolExecutor(config.executors, thread_name_prefix="xfer",
                                            initializer=self._keep_off_copy_cpu)
        self._cancels: dict[str, threading.Event] = {}
        self.watchdog = Watchdog(self.stop)
        #: READ targets waiting for their ``complete`` job: plan id → (plan, started).
        self._waiting: dict[str, tuple[TransferPlan, float]] = {}
        #: Set once deregistered at shutdown: the job stream ends with it.
        self._gone = threading.Event()
        #: When the job thread took its last job (monotonic).
        self._job_at = 0.0
        #: Set while the job thread is not in the middle of a job.
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._publish = threading.Lock()
        self._seq = 0
        #: (plan id, role) → (job received, NIXL request created), wall clock, for the report
        self._stamps: dict[tuple[str, str], tuple[float | None, float | None]] = {}
        self._active_at = 0.0
        #: WRITE targets waiting for their NIXL notification (the progress loop collects it).
        self._notif_waiters = 0
        self._posting = 0
        #: Initiator transfers posted (or about to be) and not yet reported, at most
        #: ``max_inflight``; those not on the job thread wait in ``_handed``.
        self._slots = threading.BoundedSemaphore(config.max_inflight)
        self._in_flight = 0
        #: Most transfers in flight at once so far, and how many went to ``inflight``.
        self.inflight_peak = 0
        self.handed_off = 0
        #: A C-level queue: handing off is one put that wakes the ``inflight`` thread
        #: (no Condition round trip under ``_lock`` on the job thread's path).
        self._handed: queue.SimpleQueue[_Handed] = queue.SimpleQueue()

    # -- registration -------------------------------------------------------------
    def registration(self) -> WorkerRegistration:
        """What this sidecar tells the scheduler about its worker."""
        c = self.config
        return WorkerRegistration(
            name=c.name, agent_name=c.name, agent_metadata_b64=encode_metadata(
                self.adapter.metadata()), mem_type=self.pool.mem_type, device_id=c.device_id,
            layout=self.layout, model=c.model, role=c.role, host=c.host, gpus=c.gpus,
            block_tokens=c.block_tokens)

    def register(self) -> Lease:
        """Register, retrying until ``connect_timeout_s``; then announce an empty cache."""
        deadline = time.monotonic() + self.config.connect_timeout_s
        while True:
            try:
                self.lease = self.client.register(self.registration())
                break
            except SchedulerUnavailableError:
                if time.monotonic() >= deadline or self.stop.is_set():
                    raise
        with self._publish:
            self._seq = 0
        self._events({"kind": "all_blocks_cleared"})
        log.info("registered %s epoch=%d ttl=%.1fs", self.config.name, self.lease.epoch,
                 self.lease.ttl_s)
        self.write_state("serving")
        return self.lease

    # -- threads ------------------------------------------------------------------
    def serve(self) -> None:
        """Start the background threads (call after :meth:`register`). With
        ``--copy-cpu`` the calling thread, and so every thread it starts, keeps off that
        CPU, which the job thread takes for itself."""
        self._keep_off_copy_cpu()
        for target, name in ((self._job_loop, "jobs"), (self._heartbeat_loop, "heartbeat"),
                             (self._progress_loop, "progress"),
                             (self._inflight_loop, "inflight"),
                             (self.watchdog.run, "watchdog")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def _heartbeat_loop(self) -> None:
        # Runs until deregistered: a draining sidecar's lease must not lapse.
        while not self._gone.wait(self.lease.ttl_s / 3 if self.lease else 1.0):
            try:
                self.lease = self.client.heartbeat(self.config.name)
            except NotFoundError:
                if self.stop.is_set():
                    continue  # draining: nothing new will come, nothing to register for
                log.warning("lease lapsed; registering again")
                with contextlib.suppress(ToposchedError):
                    self.register()
            except SchedulerUnavailableError as exc:
                log.warning("heartbeat failed: %s", exc)

    def _progress_loop(self) -> None:
        interval = _IDLE_INTERVAL_S
        # Runs until deregistered: peers still reading this agent's memory while it
        # drains need its progress (UCX wire-up of a new connection included).
        while not self._gone.wait(interval):
            try:
                if self.adapter.poll_notifs():
                    self.touch()
            except Exception as exc:  # keep polling; one bad poll must not stop progress
                log.warning("notification poll failed: %s", exc)
            # While this process posts a transfer, its own completion checks drive UCX
            # progress; polling hot on top would only compete for the CPU and the lock.
            interval = self._poll_interval()

    def _poll_interval(self) -> float:
        """The progress loop's next wait (see :data:`_HOT_INTERVAL_S`)."""
        since = time.monotonic() - self._active_at
        if since < _HOT_WINDOW_S and not self._posting:
            return _HOT_INTERVAL_S
        if since < _WARM_WINDOW_S or self._notif_waiters:
            return _IDLE_INTERVAL_S
        return _QUIET_INTERVAL_S

    def touch(self) -> None:
        """Note transfer activity: progress polling runs hot for a short while."""
        self._active_at = time.monotonic()

    def _keep_off_copy_cpu(self) -> None:
        """Keep the calling thread (and the threads it starts) off ``--copy-cpu``."""
        if self._other_cpus is not None:
            os.sched_setaffinity(0, self._other_cpus)

    def _job_loop(self) -> None:
        # Runs on after stop is set, until deregistered: waiting targets still get their
        # complete or abort job, a passive target its completes, and new transfers are
        # rejected meanwhile; the stream ends with the registration.
        if self.config.copy_cpu is not None:
            # A CPU of its own: on a CPU-copy transport the copy runs on this thread, and
            # a woken thread of this process placed beside it would stall the copy.
            os.sched_setaffinity(0, {self.config.copy_cpu})
        while not self._gone.is_set():
            try:
                with self.client.job_stream(self.config.name, self.config.poll_wait_s,
                                            self.jobs_received) as jobs:
                    self._serve_stream(jobs)
            except NotFoundError:
                self._gone.wait(0.2)  # lease lapsed; the heartbeat thread re-registers
            except ToposchedError as exc:
                log.warning("job stream failed: %s", exc)
                self._gone.wait(0.5)

    def _serve_stream(self, jobs: JobStream) -> None:
        """Dispatch the stream's jobs until it ends."""
        for job in jobs:
            self._idle.clear()
            self._job_at = time.monotonic()
            try:
                self.dispatch(job, time.monotonic(), jobs.ready)
            finally:
                self._idle.set()
            if self._gone.is_set():
                return

    def dispatch(self, job: TransferJob, received: float,
                 next_waiting: Callable[[], bool] = _nothing_waiting) -> None:
        """Do one job on this thread: ``execute`` posts and drives the transfer (handing
        it off after ``post_wait_s``), ``await`` validates and notes a READ target (a
        WRITE target waits for its notification on an executor thread), ``complete`` and
        ``abort`` end a wait.

        ``received`` is the monotonic time the job arrived (it starts the deadline; the
        report carries it on the wall clock, like the record's times, with the time the
        NIXL request was created, so a transfer splits into its stages).
        ``next_waiting()`` says whether another job can be read at once: an ``execute``
        then hands its transfer to the ``inflight`` thread instead of driving and
        reporting it here.
        """
        if job.kind in ("abort", "complete"):
            if self._stale(job):
                return
            if not self._passive_end(job):
                self._end_wait(job)
            return
        assert job.plan is not None
        plan = job.plan
        role = "initiator" if job.kind == "execute" else "target"
        if self.stop.is_set():
            self._report(plan, role, "rejected", error="sidecar is shutting down")
            return
        with self._lock:
            self._stamps[(plan.plan_id, role)] = (
                time.time() - (time.monotonic() - received), None)
        if plan.notify == "nixl":
            self.touch()  # notifications will flow: poll hot so they are acknowledged
        # The plan's own window (not_after, wall clock) bounds a job that waited in the
        # queue or reached a sidecar that was stalled.
        budget = max(0.0, min(plan.deadline_s, plan.not_after - time.time()))
        deadline = received + budget
        key = (plan.plan_id, role)
        if job.kind == "await" and plan.notify == "scheduler":
            # Nothing to wait on here: the complete or abort job ends it, else its deadline.
            self.watchdog.arm(key, deadline, lambda: self._finish(
                plan, role, "timeout", error=f"{plan.plan_id}: timeout before the initiator "
                "reported completion"))
            self._await_scheduler(plan)
            return
        self.watchdog.arm(key, deadline + _WATCHDOG_GRACE_S, lambda: self._finish(
            plan, role, "timeout", error="no result before the deadline (a NIXL call is "
            "stuck)"))
        with self._lock:
            self._cancels.setdefault(plan.plan_id, threading.Event())
        if job.kind == "await":
            self._executor.submit(self._await, plan, deadline)
        else:
            self._execute(plan, deadline, next_waiting)

    def _stale(self, job: TransferJob) -> bool:
        """True (and counted, logged at debug) for a ``complete`` or ``abort`` of a plan
        built against an earlier registration of this worker: its blocks started free
        when it registered again, so the engine hook must not hear of them."""
        epoch = job.epoch
        if epoch is None and job.plan is not None and self.config.name in (
                job.plan.src.worker, job.plan.dst.worker):
            epoch = job.plan.epoch_of(self.config.name)
        lease = self.lease
        if epoch is None or lease is None or epoch >= lease.epoch:
            return False
        log.debug("dropped %s of %s: epoch %d, registered at %d", job.kind, job.plan_id,
                  epoch, lease.epoch)
        with self._lock:
            self.stale_dropped += 1
        return True

    def _passive_end(self, job: TransferJob) -> bool:
        """A transfer this sidecar was the passive target of (a READ told through the
        scheduler: no ``await``, no report) ended: its ``complete`` names the blocks
        that were read, its ``abort`` carries the plan; the engine hook hears of it.
        False for any other job."""
        if job.kind == "complete" and job.blocks is not None:
            self.engine.on_sent(job.plan_id, job.blocks)
            outcome: Outcome = "ok"
        elif job.kind == "abort" and job.plan is not None and passive_target(job.plan) \
                and job.plan.target == self.config.name:
            self.engine.on_failed(job.plan, job.reason or "aborted")
            outcome = "aborted"
        else:
            return False
        with self._lock:
            self.outcomes[outcome] += 1
        return True

    def _end_wait(self, job: TransferJob) -> None:
        """A ``complete`` or ``abort`` job: end the READ target's wait here; wake a WRITE
        target's waiter or stop an initiator that has not posted yet."""
        with self._lock:
            waiting = self._waiting.pop(job.plan_id, None)
            cancel = self._cancels.get(job.plan_id)
        if cancel is not None:
            cancel.set()
        if waiting is None:
            return
        plan, started = waiting
        if job.kind == "complete":
            self._finish(plan, "target", "ok", result=XferResult(
                plan.total_bytes, plan.descriptors, time.perf_counter() - started))
        else:
            self._finish(plan, "target", "aborted", error=f"{plan.plan_id}: aborted before "
                         "the initiator reported completion")

    # -- transfers ----------------------------------------------------------------
    def _check(self, plan: TransferPlan) -> None:
        epoch = self.lease.epoch if self.lease else 0
        validate_plan(plan, local_worker=self.config.name, epochs={self.config.name: epoch})
        mine = plan.src if plan.src.worker == self.config.name else plan.dst
        if mine.layout != self.layout or mine.agent_name != self.adapter.name:
            raise ValidationError(f"transfer plan {plan.plan_id!r}", [Issue(
                "layout", "stale plan: this worker's layout or agent changed")])

    def _execute(self, plan: TransferPlan, deadline: float,
                 next_waiting: Callable[[], bool]) -> None:
        """Post ``plan`` on this thread and drive it; it goes to the ``inflight`` thread
        (and this thread reads the next job) when it runs past ``post_wait_s``, or, with
        ``max_inflight`` above one, when another job is waiting or another transfer is
        in flight (its report then follows theirs)."""
        posted: Posted | None = None
        slot = False
        if self.config.max_inflight == 1:  # nothing else may be posted before its report
            next_waiting = _nothing_waiting
        try:
            self._check(plan)
            if self.config.debug_hold_s:
                time.sleep(self.config.debug_hold_s)
            self._take_slot(plan, deadline)
            slot = True
            posted = self._post(plan, deadline, next_waiting)
            if posted.done_at is None or self._others_in_flight() or next_waiting():
                self._hand(_Handed(plan, deadline, posted))
                slot, posted = False, None  # the inflight thread owns both now
                return
            result = self.adapter.finish(posted)
        except Exception as exc:
            if posted is not None:
                self.adapter.release(posted)  # before the report: the handle is done with
            self._initiator_failed(plan, exc)
        else:
            self._finish(plan, "initiator", "ok", result=result)
        finally:
            if slot:
                self._free_slot()
            with self._lock:
                self._cancels.pop(plan.plan_id, None)

    def _take_slot(self, plan: TransferPlan, deadline: float) -> None:
        """Wait for one of the ``max_inflight`` slots (until the plan's deadline); then
        refuse a plan the scheduler aborted meanwhile."""
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TransferError(f"{plan.plan_id}: {self.config.max_inflight} transfers "
                                "still in flight at the deadline (nothing was moved)",
                                "timeout")
        with self._lock:
            self._in_flight += 1
            self.inflight_peak = max(self.inflight_peak, self._in_flight)
            cancel = self._cancels.get(plan.plan_id)
        if cancel is not None and cancel.is_set():
            self._free_slot()
            raise TransferError(f"{plan.plan_id}: aborted by the scheduler before "
                                "posting (nothing was moved)", "aborted")

    def _free_slot(self) -> None:
        with self._lock:
            self._in_flight -= 1
        self._slots.release()

    def _others_in_flight(self) -> bool:
        with self._lock:
            return self._in_flight > 1

    def _post(self, plan: TransferPlan, deadline: float,
              next_waiting: Callable[[], bool]) -> Posted:
        """Create and start the request, and drive it until it is done, another job is
        waiting or ``post_wait_s`` passed (``done_at`` is set when it is done)."""
        with self._lock:
            self._posting += 1
            key = (plan.plan_id, "initiator")
            self._stamps[key] = (self._stamps.get(key, (None, None))[0], time.time())
        try:
            posted = self.adapter.post(plan, deadline)
            try:
                self.adapter.drive(posted, deadline, time.monotonic() + self.config.post_wait_s,
                                   next_waiting)
            except BaseException:
                self.adapter.release(posted)
                raise
            return posted
        finally:
            with self._lock:
                self._posting -= 1

    def _hand(self, item: _Handed) -> None:
        self.handed_off += 1  # only the job thread hands off and counts
        self._handed.put(item)

    def _inflight_loop(self) -> None:
        """The ``inflight`` thread: check the handed transfers in turn (one check each
        per round), verify and report each as it completes, free its slot."""
        active: list[_Handed] = []
        while True:
            if not active:
                active.append(self._handed.get())
            with contextlib.suppress(queue.Empty):
                while True:
                    active.append(self._handed.get_nowait())
            driving = any(item.result is None for item in active)
            if driving:
                with self._lock:
                    self._posting += 1
            try:
                active = [item for item in active if not self._advance(item)]
            finally:
                if driving:
                    with self._lock:
                        self._posting -= 1
            if active:
                time.sleep(0)  # other threads of this process may take the GIL

    def _advance(self, item: _Handed) -> bool:
        """One look at a handed transfer; True once it is reported (its slot freed)."""
        try:
            if item.result is None and not self._completed(item):
                return False
            if item.result is not None:
                self._finish(item.plan, "initiator", "ok", result=item.result)
        except Exception:  # keep the thread: the watchdog reports this job
            log.exception("transfer %s: finishing failed", item.plan.plan_id)
        self._free_slot()
        return True

    def _completed(self, item: _Handed) -> bool:
        """Check a handed request once: True when it is done (``result`` set, handle
        released) or failed (reported)."""
        assert item.posted is not None
        try:
            if not self.adapter.check(item.posted, item.deadline):
                return False
            item.result = self.adapter.finish(item.posted)
        except Exception as exc:
            self.adapter.release(item.posted)
            self._initiator_failed(item.plan, exc)
        return True

    def _initiator_failed(self, plan: TransferPlan, exc: Exception) -> None:
        if isinstance(exc, ValidationError):
            self._finish(plan, "initiator", "rejected", error=str(exc))
        elif isinstance(exc, TransferError):
            if exc.kind == "failed":  # the peer is gone: reload its metadata next time
                peer = plan.dst if plan.src.worker == self.config.name else plan.src
                with contextlib.suppress(Exception):
                    self.adapter.forget_peer(peer.agent_name)
            self._finish(plan, "initiator", exc.kind, error=exc.message)
        else:  # report, never lose a job silently
            self._finish(plan, "initiator", "failed", error=f"{type(exc).__name__}: {exc}")

    def _await_scheduler(self, plan: TransferPlan) -> None:
        """A READ target: check the plan, then wait for ``complete`` (no thread waits)."""
        try:
            self._check(plan)
        except ValidationError as exc:
            self._finish(plan, "target", "rejected", error=str(exc))
            return
        with self._lock:
            self._waiting[plan.plan_id] = (plan, time.perf_counter())

    def _await(self, plan: TransferPlan, deadline: float) -> None:
        """A WRITE target (an executor thread): wait for the initiator's notification."""
        started = time.perf_counter()
        try:
            self._check(plan)
            with self._lock:
                cancel = self._cancels.setdefault(plan.plan_id, threading.Event())
                self._notif_waiters += 1
            try:
                self.adapter.wait_notif(plan.notif_tag, deadline, cancel)
            finally:
                with self._lock:
                    self._notif_waiters -= 1
        except ValidationError as exc:
            self._finish(plan, "target", "rejected", error=str(exc))
        except TransferError as exc:
            self._finish(plan, "target", exc.kind, error=exc.message)
        else:
            self._finish(plan, "target", "ok", result=XferResult(
                plan.total_bytes, plan.descriptors, time.perf_counter() - started))
        finally:
            with self._lock:
                self._cancels.pop(plan.plan_id, None)

    def _finish(self, plan: TransferPlan, role: str, outcome: Outcome, *,
                result: XferResult | None = None, error: str | None = None) -> None:
        """Verify, report and publish events once per (plan, role): the first of the job
        itself and its watchdog wins."""
        if plan.notify == "nixl":
            self.touch()
        if not self.watchdog.disarm((plan.plan_id, role)):
            return  # already finished (late completion after the watchdog fired)
        if role == "target":
            with self._lock:
                self._waiting.pop(plan.plan_id, None)
        is_dst = plan.dst.worker == self.config.name
        verified: bool | None = None
        if outcome == "ok" and is_dst:
            old = self.engine.block_hashes(plan.dst_blocks)
            verified = self.engine.on_received(plan)
            if verified is False:
                outcome, error = "failed", "destination bytes differ from the source"
        if outcome != "ok":
            self.engine.on_failed(plan, error or outcome)
            if is_dst:
                with self._lock:
                    self.recompute.append(plan.plan_id)
        stored = (lambda: self._stored_events(plan, old)) if outcome == "ok" and is_dst \
            else None
        self._report(plan, role, outcome, result=result, error=error, verified=verified,
                     events=stored)

    def _stored_events(self, plan: TransferPlan, old_content: list[int]) -> list[dict[str, Any]]:
        """KV events for received blocks: the plan's prefix hashes when it carries them
        (what the router matches on), else the engine's own content hashes."""
        if not plan.block_hashes:
            return [{"kind": "block_removed", "block_hashes": old_content},
                    {"kind": "block_stored",
                     "block_hashes": self.engine.block_hashes(plan.dst_blocks)}]
        with self._lock:
            replaced = [self._prefix_of.pop(b) for b in plan.dst_blocks if b in self._prefix_of]
            self._prefix_of.update(zip(plan.dst_blocks, plan.block_hashes, strict=True))
        events = [{"kind": "block_removed", "block_hashes": replaced}] if replaced else []
        return [*events, {"kind": "block_stored", "block_hashes": list(plan.block_hashes)}]

    def _report(self, plan: TransferPlan, role: str, outcome: Outcome, *,
                result: XferResult | None = None, error: str | None = None,
                verified: bool | None = None,
                events: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        """Send the report, and the KV events ``events()`` makes (numbered under the same
        lock) behind it in one write on the report stream."""
        duration = result.duration_s if result else 0.0
        nbytes = result.nbytes if result and outcome == "ok" else 0
        with self._lock:
            received_at, started_at = self._stamps.pop((plan.plan_id, role), (None, None))
        report = TransferReport(
            plan_id=plan.plan_id, worker=self.config.name,
            role="initiator" if role == "initiator" else "target", outcome=outcome,
            bytes=nbytes, descriptors=result.descriptors if result else 0, duration_s=duration,
            gb_per_s=nbytes / duration / 1e9 if duration > 0 else 0.0, tier=plan.hints.tier,
            error=error, verified=verified,
            recompute=outcome != "ok" and plan.dst.worker == self.config.name,
            received_at=received_at, started_at=started_at)
        with self._lock:
            self.outcomes[outcome] += 1
        with self._publish:
            numbered = self._numbered(events()) if events else None
            try:
                self.client.send_report(report, numbered)
            except ToposchedError as exc:
                log.warning("report of %s not delivered: %s", plan.plan_id, exc)
        # Logged once the report is on its way (the scheduler waits for it, not the log).
        log.info("transfer %s %s %s bytes=%d desc=%d %.6fs %.2f GB/s %s", plan.plan_id, role,
                 outcome, report.bytes, report.descriptors, duration, report.gb_per_s,
                 error or "")

    def _request_ended(self, plan: TransferPlan) -> None:
        """The engine's request that used ``plan``'s blocks ended: the scheduler frees
        them (the epoch in the plan guards against freeing a later registration's)."""
        if self.stop.is_set():
            return  # deregistering: every block goes with the registration
        try:
            self.client.send_release(plan.plan_id, self.config.name)
        except ToposchedError as exc:
            log.warning("release of %s not delivered: %s", plan.plan_id, exc)

    def _events(self, *events: dict[str, Any]) -> None:
        # Numbering and sending under one lock: the index reads a seq gap as lost events.
        with self._publish:
            try:
                self.client.send_events(self.config.name, self._numbered(list(events)))
            except ToposchedError as exc:
                log.warning("KV events not delivered: %s", exc)

    def _numbered(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``events`` with this worker's name and the next sequence numbers (hold
        ``_publish`` until they are sent)."""
        numbered = []
        for event in events:
            self._seq += 1
            item = {**event, "worker": self.config.name, "seq": self._seq}
            if self.config.model and event["kind"] != "all_blocks_cleared":
                item["model"] = self.config.model
            numbered.append(item)
        return numbered

    # -- shutdown -----------------------------------------------------------------
    def shutdown(self) -> dict[str, Any]:
        """Drain, deregister everywhere, write and return the final state."""
        self.stop.set()
        stopped_at = time.time()
        give_up = time.monotonic() + self.config.drain_timeout_s
        self._announce_drain()
        drained = _wait_until(lambda: self._idle.is_set() and not self._waiting
                              and not self._in_flight, give_up)
        drained = _bounded_shutdown(self._executor, max(0.0, give_up - time.monotonic())) \
            and drained
        drained = self._drain_passive(stopped_at, give_up) and drained
        deregistered = True
        try:
            self.client.deregister(self.config.name)
        except ToposchedError as exc:
            deregistered = False
            log.warning("could not deregister from the scheduler: %s", exc)
        self._gone.set()
        summary = self.adapter.close()
        self.pool.close()
        self.client.close()
        return self.write_state("stopped", drained=drained, scheduler_deregistered=deregistered,
                                reports_streamed=self.client.reports_streamed,
                                reports_posted=self.client.reports_posted,
                                events_streamed=self.client.events_streamed,
                                events_posted=self.client.events_posted,
                                releases_streamed=self.client.releases_streamed,
                                releases_posted=self.client.releases_posted,
                                inflight_peak=self.inflight_peak, handed_off=self.handed_off,
                                jobs_received=dict(self.jobs_received),
                                **_engine_counts(self.engine),
                                **asdict(summary))

    def _announce_drain(self) -> None:
        """Tell the scheduler first, so that it hands this worker no new transfer while
        the drain waits for the pending ones (nothing to tell when never registered)."""
        if self.lease is None:
            return
        try:
            self.client.drain(self.config.name)
            self.drain_announced = True
        except ToposchedError as exc:
            log.warning("could not tell the scheduler this worker is draining: %s", exc)

    def _drain_passive(self, stopped_at: float, give_up: float) -> bool:
        """Keep the memory registered while transfers may still read it: this sidecar
        is not told of the READs it is the passive target of until they end, so ask the
        scheduler until none of this worker's transfers created before ``stopped_at``
        (wall time: later ones fail when it deregisters) is pending (until
        ``give_up``), then read the job stream until it has been quiet for ``_QUIET_S``
        since then (the ``complete`` jobs written last). True when drained; also when the
        scheduler cannot be asked (deregistering then fails whatever is left)."""
        try:
            while self.client.pending(self.config.name, stopped_at):
                if time.monotonic() >= give_up:
                    return False
                time.sleep(_DRAIN_POLL_S)
        except ToposchedError as exc:
            log.warning("could not ask the scheduler for pending transfers: %s", exc)
            return True
        none_left = time.monotonic()  # the last complete may still be on its way
        return _wait_until(lambda: self._idle.is_set() and time.monotonic()
                           - max(self._job_at, none_left) >= _QUIET_S, give_up)

    def write_state(self, state: str, **extra: Any) -> dict[str, Any]:
        """Write the state file (atomically) if one was asked for; return its content."""
        data = {"name": self.config.name, "pid": os.getpid(), "state": state,
                "epoch": self.lease.epoch if self.lease else None,
                "outcomes": dict(self.outcomes), "recompute": list(self.recompute),
                "stale_dropped": self.stale_dropped, "drain_announced": self.drain_announced,
                **extra}
        path = self.config.state_file
        if path is not None:
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            tmp.replace(path)
        return data


def _engine_counts(engine: EngineHook) -> dict[str, int]:
    """The fake engine's counts of transfers out of it, for the state file."""
    if not isinstance(engine, FakeEngine):
        return {}
    return {"sent_transfers": engine.sent_transfers, "sent_blocks": engine.sent_blocks,
            "sent_failed": engine.sent_failed}


def _fake_engine(config: SidecarConfig) -> EngineHook:
    pool = KvPool(num_blocks=config.kv_blocks, block_bytes=config.block_bytes,
                  kind=config.layout, regions=config.regions, mem=config.mem,
                  device_id=config.device_id)
    decode_s = config.fake_decode_ms / 1000 if config.fake_decode_ms >= 0 else None
    return FakeEngine(pool, config.name, config.verify, decode_s)


def _wait_until(check: Callable[[], bool], give_up: float) -> bool:
    """Check every 10 ms until ``check()`` or the monotonic time ``give_up``."""
    while not check():
        if time.monotonic() >= give_up:
            return False
        time.sleep(0.01)
    return True


def _bounded_shutdown(executor: ThreadPoolExecutor, timeout_s: float) -> bool:
    """Wait for in-flight transfers up to ``timeout_s``; True when all finished."""
    waiter = threading.Thread(target=executor.shutdown, kwargs={"wait": True}, daemon=True)
    waiter.start()
    waiter.join(timeout_s)
    return not waiter.is_alive()


def _start_announcer(config: SidecarConfig) -> Announcer | None:
    """Announce the engine next to this sidecar in the background (``--engine-instance``)."""
    if config.engine_instance is None:
        return None
    announcer = Announcer(config.scheduler, load_announcement(config.engine_instance),
                          config.announce_every_s, token=config.token)
    threading.Thread(target=announcer.run, name="announce", daemon=True).start()
    return announcer


def run_sidecar(config: SidecarConfig) -> int:
    """Run a sidecar until SIGTERM/SIGINT; returns the process exit code."""
    # Threads here mostly wait on NIXL or sockets; a short GIL switch interval keeps a
    # busy thread from delaying the progress thread by the default 5 ms.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    sidecar = Sidecar(config)
    previous = {sig: signal.signal(sig, lambda *_: sidecar.stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    announcer = _start_announcer(config)
    try:
        try:
            sidecar.register()
        except SchedulerUnavailableError:
            sidecar.shutdown()
            raise
        sidecar.serve()
        while not sidecar.stop.wait(0.5):
            pass
        state = sidecar.shutdown()
    finally:
        if announcer is not None:
            announcer.stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if state["drained"] and not state["leaked_handles"] else 1
