"""The only module that imports NIXL: one agent, its registered pool, peers, transfers.

Rules this adapter keeps (docs/NIXL.md):

* Every agent call holds one lock: the agent is created without NIXL's own thread
  synchronisation, and executor threads, the notification poller and shutdown share it.
* Descriptor lists are prepared once: one local list over the pool, one list per peer
  over the peer's pool, one row per (region, block), region-major so that a run of
  blocks is a run of indices that NIXL merges into one descriptor.
* A request handle is always released in ``finally``; a release NIXL refuses (a
  transfer still in flight after a deadline) is kept and retried at shutdown.
* Transfers are polled with a deadline: a hung peer leaves a request in ``PROC``
  forever, and NIXL itself never gives up.
* No progress thread by default: it busy-spins a core per agent. The sidecar polls
  (:meth:`NixlAdapter.poll_notifs`) from its own low-rate thread instead, and sends the
  notification after completion instead of attaching it to the request (an attached
  one makes the initiator wait for the target's next poll).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nixl._api import nixl_agent, nixl_agent_config

from scheduler.transfer.build import decode_metadata
from scheduler.transfer.plan import KvLayout, MemType, PlanEndpoint, TransferPlan
from sidecar.descriptors import descriptor_rows, row_indices
from sidecar.errors import TransferError
from topology.errors import Issue, ValidationError

log = logging.getLogger(__name__)

#: A notification waiter re-checks cancel/deadline at least this often.
_WAIT_SLICE_S = 0.01
_MAX_PENDING_NOTIFS = 65536
#: NIXL exceptions that mean "these metadata bytes are not valid", not "peer down".
_BAD_METADATA = frozenset({"nixlMismatchError", "nixlInvalidParamError"})


@dataclass
class _Peer:
    agent: str
    digest: bytes
    text: str
    epoch: int
    layout: KvLayout
    dlist: Any


@dataclass
class Posted:
    """A request this agent posted: its handle, state and times (perf_counter)."""

    handle: Any
    plan: TransferPlan
    peer: str
    started: float
    state: str = "PROC"
    done_at: float | None = None
    released: bool = False


@dataclass(frozen=True)
class XferResult:
    """What one posted request did."""

    nbytes: int
    descriptors: int
    duration_s: float


@dataclass(frozen=True)
class CloseSummary:
    """What shutdown released; ``leaked_handles`` should be zero."""

    deregistered: bool
    peers_removed: int
    leaked_handles: int


class NixlAdapter:
    """One NIXL agent (UCX backend) owning one registered KV pool."""

    def __init__(self, name: str, *, progress_thread: bool = False,
                 ucx_devices: str | None = None) -> None:
        self.name = name
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        params = {"ucx_devices": ucx_devices} if ucx_devices else None
        config = nixl_agent_config(enable_prog_thread=progress_thread,
                                   backends=[] if params else ["UCX"])
        self._agent: Any = nixl_agent(name, config)
        if params:
            self._agent.create_backend("UCX", params)
        self._reg: Any = None
        self._local: Any = None
        self._layout: KvLayout | None = None
        self._peers: dict[str, _Peer] = {}
        self._notifs: dict[bytes, str] = {}
        self._leaked: list[Any] = []

    def register(self, rows: list[tuple[int, int, int, str]], layout: KvLayout,
                 mem_type: MemType, device_id: int) -> None:
        """Register the pool once and prepare the local descriptor list over it."""
        with self._lock:
            self._reg = self._agent.register_memory(rows, mem_type)
            self._local = self._agent.prep_xfer_dlist(
                "NIXL_INIT_AGENT", descriptor_rows(layout, device_id), mem_type)
            self._layout = layout

    def metadata(self) -> bytes:
        """This agent's metadata (connection info and registered regions)."""
        with self._lock:
            data: bytes = self._agent.get_agent_metadata()
            return data

    def peers(self) -> list[str]:
        """Agent names of the peers loaded so far."""
        with self._lock:
            return sorted(self._peers)

    def ensure_peer(self, peer: PlanEndpoint) -> None:
        """Load a peer's metadata and prepare its descriptor list, once per epoch."""
        with self._lock:
            known = self._peers.get(peer.agent_name)
            if known and (known.text, known.epoch, known.layout) == (
                    peer.agent_metadata_b64, peer.epoch, peer.layout):
                return  # the same text again: no need to decode and hash it
        raw = decode_metadata(peer.agent_metadata_b64)
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        with self._lock:
            known = self._peers.get(peer.agent_name)
            if known and (known.digest, known.epoch, known.layout) == (digest, peer.epoch,
                                                                      peer.layout):
                known.text = peer.agent_metadata_b64
                return
            if known:
                self._drop_peer(known)
            try:
                loaded = self._agent.add_remote_agent(raw)
            except Exception as exc:
                if type(exc).__name__ in _BAD_METADATA:
                    raise ValidationError("transfer plan", [Issue(
                        "agent_metadata_b64", f"NIXL rejected metadata of "
                        f"{peer.agent_name!r}: {exc}")]) from exc
                # NIXL connects while loading metadata: a dead peer fails here.
                raise TransferError(f"cannot reach {peer.agent_name!r}: "
                                    f"{type(exc).__name__}: {exc}") from exc
            loaded = loaded.decode() if isinstance(loaded, bytes) else str(loaded)
            if loaded != peer.agent_name:
                self._agent.remove_remote_agent(loaded)
                raise ValidationError("transfer plan", [Issue(
                    "agent_name", f"metadata belongs to agent {loaded!r}, "
                    f"plan names {peer.agent_name!r}")])
            dlist = self._agent.prep_xfer_dlist(
                peer.agent_name, descriptor_rows(peer.layout, peer.device_id), peer.mem_type)
            self._peers[peer.agent_name] = _Peer(peer.agent_name, digest,
                                                 peer.agent_metadata_b64, peer.epoch,
                                                 peer.layout, dlist)

    def forget_peer(self, agent: str) -> bool:
        """Release a peer's descriptor list and metadata (it restarted or left)."""
        with self._lock:
            known = self._peers.get(agent)
            if known:
                self._drop_peer(known)
            return known is not None

    def _drop_peer(self, peer: _Peer) -> None:
        self._peers.pop(peer.agent, None)
        try:
            self._agent.release_dlist_handle(peer.dlist)
        finally:
            self._agent.remove_remote_agent(peer.agent)

    def execute(self, plan: TransferPlan, deadline: float) -> XferResult:
        """Post ``plan`` (this agent is its initiator) and wait until done or ``deadline``.

        Raises :class:`TransferError` (``failed`` or ``timeout``); the request handle is
        released either way.
        """
        posted = self.post(plan, deadline)
        try:
            self.drive(posted, deadline)
        except BaseException:
            self.release(posted)
            raise
        return self.finish(posted)

    def post(self, plan: TransferPlan, deadline: float) -> Posted:
        """Create and start ``plan``'s request (this agent is its initiator).

        Then :meth:`drive` it to completion and :meth:`finish` it (or :meth:`release` it
        on failure), on this thread or another. Raises :class:`TransferError`; a request
        that failed to start is released here.
        """
        local_is_src = plan.src.agent_name == self.name
        peer = plan.dst if local_is_src else plan.src
        self.ensure_peer(peer)
        local_blocks = plan.src_blocks if local_is_src else plan.dst_blocks
        remote_blocks = plan.dst_blocks if local_is_src else plan.src_blocks
        assert self._layout is not None, "register() first"
        if time.monotonic() >= deadline:
            raise TransferError(f"{plan.plan_id}: deadline passed before posting "
                                "(nothing was moved)", "timeout")
        started = time.perf_counter()  # request creation is part of the per-transfer cost
        with self._lock:
            handle = self._agent.make_prepped_xfer(
                plan.mode, self._local, row_indices(self._layout, local_blocks),
                self._peers[peer.agent_name].dlist, row_indices(peer.layout, remote_blocks))
        posted = Posted(handle, plan, peer.agent_name, started)
        try:
            with self._lock:
                posted.state = self._agent.transfer(handle)
                if posted.state == "DONE":
                    # Loopback: the copy ran inside transfer(). Release now, under the
                    # lock already held: a thread that reports this transfer later
                    # then needs no agent call, so it does not wait for the next copy.
                    posted.done_at = time.perf_counter()
                    self.release(posted)
        except Exception as exc:  # nixlRemoteDisconnectError and friends
            self.release(posted)
            raise TransferError(f"{plan.plan_id}: {type(exc).__name__}: {exc}") from exc
        return posted

    def drive(self, posted: Posted, deadline: float, until: float | None = None,
              interrupt: Callable[[], bool] | None = None) -> bool:
        """Check ``posted`` back to back until it is done (True), or ``until`` (monotonic)
        passed or ``interrupt()`` is true (False: still in flight). Raises
        :class:`TransferError` on failure or at ``deadline``; the handle stays with the
        caller (:meth:`release`)."""
        while not self.check(posted, deadline):
            if until is not None and time.monotonic() >= until:
                return False
            if interrupt is not None and interrupt():
                return False
            # Each check drives UCX progress, which issues the next fragments of a
            # large copy: keep checking. sleep(0) only lets other threads of this
            # process take the GIL between checks.
            time.sleep(0)
        return True

    def check(self, posted: Posted, deadline: float) -> bool:
        """Look at ``posted`` once: True when it is done (``done_at`` stamped), False
        while in flight. Raises :class:`TransferError` on failure or at ``deadline``."""
        plan_id = posted.plan.plan_id
        if posted.state == "PROC":
            if time.monotonic() >= deadline:
                raise TransferError(f"{plan_id}: no completion before the deadline "
                                    "(peer hung?)", "timeout")
            try:
                with self._lock:
                    posted.state = self._agent.check_xfer_state(posted.handle)
            except Exception as exc:  # nixlRemoteDisconnectError and friends
                raise TransferError(f"{plan_id}: {type(exc).__name__}: {exc}") from exc
            if posted.state == "PROC":
                return False
        if posted.done_at is None:
            posted.done_at = time.perf_counter()
        if posted.state != "DONE":
            raise TransferError(f"{plan_id}: NIXL reported {posted.state}")
        return True

    def finish(self, posted: Posted) -> XferResult:
        """Release a completed request, notify the target (``notify: nixl``), and say
        what it did (``duration_s``: request creation → completion seen)."""
        self.release(posted)
        plan = posted.plan
        if plan.notify == "nixl":
            self._notify(posted.peer, plan.notif_tag, plan.plan_id)
        done_at = posted.done_at if posted.done_at is not None else time.perf_counter()
        return XferResult(plan.total_bytes, plan.descriptors, done_at - posted.started)

    def release(self, posted: Posted) -> None:
        """Release ``posted``'s handle (kept for shutdown if NIXL refuses); once."""
        if not posted.released:
            posted.released = True
            self._release(posted.handle)

    def _notify(self, agent: str, tag: str, plan_id: str) -> None:
        # Sent on its own after completion rather than attached to the request: an
        # attached notification makes completion wait until the *target* drives progress
        # (5-8 ms with a 5 ms poll, measured), a detached one costs the initiator nothing.
        try:
            with self._lock:
                self._agent.send_notif(agent, tag.encode())
        except Exception as exc:
            raise TransferError(f"{plan_id}: data moved but {agent!r} could not be notified: "
                                f"{type(exc).__name__}: {exc}") from exc

    def _release(self, handle: Any) -> None:
        with self._lock:
            try:
                self._agent.release_xfer_handle(handle)
            except Exception:
                # Still in flight (NIXL could not cancel): keep it, retry at shutdown.
                self._leaked.append(handle)

    def poll_notifs(self) -> int:
        """Drive progress and collect notifications; returns how many arrived."""
        with self._lock:
            fresh = self._agent.get_new_notifs()
            count = 0
            for sender, messages in fresh.items():
                for message in messages:
                    self._notifs[bytes(message)] = str(sender)
                    count += 1
            while len(self._notifs) > _MAX_PENDING_NOTIFS:
                self._notifs.pop(next(iter(self._notifs)))
            if count:
                self._arrived.notify_all()
            return count

    def wait_notif(self, tag: str, deadline: float, cancel: threading.Event) -> str:
        """Wait for the notification ``tag``; returns the sender's agent name.

        The caller's progress thread must keep calling :meth:`poll_notifs` (it wakes this
        waiter); one poller per process keeps the CPU for the copies. Raises
        :class:`TransferError` on ``deadline`` (``timeout``) or ``cancel`` (aborted).
        """
        key = tag.encode()
        with self._arrived:
            while key not in self._notifs:
                now = time.monotonic()
                if cancel.is_set():
                    raise TransferError(f"{tag}: aborted by the scheduler", "aborted")
                if now >= deadline:
                    raise TransferError(f"{tag}: notification did not arrive before the "
                                        "deadline", "timeout")
                self._arrived.wait(min(_WAIT_SLICE_S, deadline - now))
            return self._notifs.pop(key)

    def close(self, timeout_s: float = 5.0) -> CloseSummary:
        """Release every handle and peer, deregister the pool; the agent is unusable after.

        Gives up after ``timeout_s`` if a NIXL call is stuck holding the agent (nothing
        is released then, and the summary says so).
        """
        if not self._lock.acquire(timeout=timeout_s):
            return CloseSummary(False, 0, len(self._leaked) + 1)
        try:
            return self._close()
        finally:
            self._lock.release()

    def _close(self) -> CloseSummary:
        peers = list(self._peers.values())
        for peer in peers:
            try:
                self._drop_peer(peer)
            except Exception as exc:  # a dead peer must not stop the rest of the cleanup
                log.warning("releasing peer %s: %s", peer.agent, exc)
        still = []
        for handle in self._leaked:
            try:
                self._agent.release_xfer_handle(handle)
            except Exception:
                still.append(handle)
        if self._local is not None:
            self._agent.release_dlist_handle(self._local)
            self._local = None
        deregistered = self._reg is not None
        if self._reg is not None:
            self._agent.deregister_memory(self._reg)
            self._reg = None
        return CloseSummary(deregistered, len(peers), len(still))
