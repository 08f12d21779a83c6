"""The seam between a sidecar and its serving engine, and a fake engine for tests.

A real integration implements :class:`EngineHook`: it hands over the KV memory as a
:class:`~sidecar.pool.KvPool` (built around the engine's tensors), names the content
of blocks for KV events, hears about every finished or failed transfer, so the
decode side can recompute instead of waiting for KV that will not arrive, and says
when the request that used received blocks ended, so the scheduler can hand them out
again (:meth:`EngineHook.set_release`).

:class:`FakeEngine` fills every block with bytes derived from (worker, block, region),
so the destination can regenerate what must have arrived and check it byte for byte.
It "decodes" each received request for ``decode_s`` and then ends it, so a
scheduler with fake engines never runs out of blocks.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import numpy as np

from scheduler.transfer.plan import TransferPlan
from sidecar.pool import Bytes, KvPool

log = logging.getLogger(__name__)

VerifyMode = Literal["full", "moved", "off"]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
#: Told that the request which used a received plan's blocks ended.
Release = Callable[[TransferPlan], None]


class EngineHook(Protocol):
    """What a sidecar needs from the engine it runs next to."""

    @property
    def pool(self) -> KvPool:
        """The engine's KV memory, registered with NIXL by the sidecar."""

    def block_hashes(self, blocks: Sequence[int]) -> list[int]:
        """Content hashes (unsigned 64-bit) of local blocks, for KV events."""

    def on_received(self, plan: TransferPlan) -> bool | None:
        """Blocks of ``plan`` landed here; return the verification result (None: unchecked)."""

    def on_failed(self, plan: TransferPlan, reason: str) -> None:
        """A transfer into (or out of) this engine failed; the decode side recomputes."""

    def on_sent(self, plan_id: str, blocks: Sequence[int]) -> None:
        """A READ transfer that read ``blocks`` of this engine (its source) is done: the
        engine may reuse them. Told in batches, some milliseconds after the destination
        reported (nobody waits for it)."""

    def set_release(self, release: Release) -> None:
        """Take the function to call, with the received plan, once the request that used
        its blocks ended (finished, or failed and recomputed): the sidecar then tells the
        scheduler, which frees the blocks and the rest of the request's load."""


def pattern(worker: str, block: int, region: int, nbytes: int) -> Bytes:
    """Deterministic bytes of block ``block`` / region ``region`` filled by ``worker``."""
    seed = np.uint64(zlib.crc32(f"{worker}:{block}:{region}".encode()) | 1)
    words = np.arange(1, (nbytes + 7) // 8 + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = words * _GOLDEN + seed
        mixed ^= mixed >> np.uint64(29)
    out: Bytes = mixed.view(np.uint8)[:nbytes]
    return out


class FakeEngine:
    """An engine stand-in with deterministic, verifiable block contents.

    Verification (``verify``): ``moved`` checks the blocks a transfer wrote; ``full``
    also every block this engine still holds from earlier transfers (received, request
    not ended). Free blocks are never checked: the scheduler may have handed them to a
    transfer that is writing them right now, one this engine may not even have heard
    of yet (a WRITE's initiator can post before the target's job arrives).
    """

    def __init__(self, pool: KvPool, worker: str, verify: VerifyMode = "full",
                 decode_s: float | None = None) -> None:
        """``decode_s``: how long each received request runs before it ends (None:
        never; the blocks stay held)."""
        self._pool = pool
        self.worker = worker
        self.verify_mode: VerifyMode = verify
        self.decode_s = decode_s
        #: Which (worker, block) each local block's bytes came from; None: undefined (the
        #: destination of a failed transfer, which a late writer may still have touched).
        self.content: list[tuple[str, int] | None] = [(worker, b)
                                                       for b in range(pool.num_blocks)]
        #: Blocks received by requests that have not ended: nobody may write them.
        self.held: set[int] = set()
        self.recompute: list[str] = []
        #: Transfers out of this engine that ended (``on_sent``), their blocks, and
        #: those that failed (``on_failed`` as their source).
        self.sent_transfers = 0
        self.sent_blocks = 0
        self.sent_failed = 0
        self._release: Release | None = None
        #: Executor and timer threads both change content and held blocks.
        self._lock = threading.Lock()
        self._ends = _Timers(f"decode-{worker}")
        self.fill()

    @property
    def pool(self) -> KvPool:
        """The KV memory of this fake engine."""
        return self._pool

    def set_release(self, release: Release) -> None:
        """Take the function that ends a request at the scheduler."""
        self._release = release

    def fill(self) -> None:
        """Write every block's own pattern."""
        for block in range(self._pool.num_blocks):
            self.content[block] = (self.worker, block)
            for region in range(self._pool.region_count):
                self._pool.write(region, block, pattern(self.worker, block, region,
                                                        self._pool.region_block_bytes))

    def block_hashes(self, blocks: Sequence[int]) -> list[int]:
        """Hash of each block's origin: equal bytes give equal hashes across workers."""
        return [_origin_hash(self.content[b]) for b in blocks]

    def on_received(self, plan: TransferPlan) -> bool | None:
        """Record where the new blocks came from, check them (and, ``full``, the blocks
        held from earlier transfers) byte for byte, and start the request."""
        with self._lock:
            for src, dst in zip(plan.src_blocks, plan.dst_blocks, strict=True):
                self.content[dst] = (plan.src.worker, src)
            self.held.update(plan.dst_blocks)
            checked = sorted(self.held) if self.verify_mode == "full" else plan.dst_blocks
            result = None if self.verify_mode == "off" else not self.mismatches(checked)
        if result is not False:  # a mismatch fails the transfer: on_failed follows
            self._start_request(plan)
        return result

    def mismatches(self, blocks: Sequence[int] | range) -> list[int]:
        """Blocks whose bytes differ from what their recorded origin must hold."""
        return [b for b in blocks if self._differs(b)]

    def _differs(self, block: int) -> bool:
        origin = self.content[block]
        if origin is None:
            return False
        size = self._pool.region_block_bytes
        return any(not np.array_equal(self._pool.read(r, block),
                                      pattern(origin[0], origin[1], r, size))
                   for r in range(self._pool.region_count))

    def on_failed(self, plan: TransferPlan, reason: str) -> None:
        """Remember that ``plan`` must be recomputed (a real engine re-runs prefill); as
        its destination, treat the target blocks as undefined from now on (they are not
        held: the scheduler quarantines them) and run the recomputed request."""
        if plan.dst.worker != self.worker:
            with self._lock:
                self.sent_failed += 1
            return
        with self._lock:
            self.recompute.append(plan.plan_id)
            for block in plan.dst_blocks:
                self.content[block] = None
                self.held.discard(block)
        self._start_request(plan)

    def on_sent(self, plan_id: str, blocks: Sequence[int]) -> None:
        """Count a transfer read from this engine that ended (its blocks keep their
        bytes: the fake engine's blocks always hold their own pattern)."""
        with self._lock:
            self.sent_transfers += 1
            self.sent_blocks += len(blocks)

    def _start_request(self, plan: TransferPlan) -> None:
        if self.decode_s is None:
            return
        self._ends.call_at(time.monotonic() + self.decode_s, lambda: self._end_request(plan))

    def _end_request(self, plan: TransferPlan) -> None:
        """The request is over: its blocks are no longer held; tell the scheduler."""
        with self._lock:
            self.held.difference_update(plan.dst_blocks)
        if self._release is not None:
            self._release(plan)


@functools.lru_cache(maxsize=1 << 16)
def _origin_hash(origin: tuple[str, int] | None) -> int:
    """A block origin's hash, kept: a received transfer asks for every block's hash
    twice (before and after), ~1 µs each to compute on the report's path."""
    return int.from_bytes(hashlib.blake2b(repr(origin).encode(), digest_size=8).digest(),
                          "big")


class _Timers:
    """Functions run at their times on one thread of its own, started at the first call
    (a thread per request cost its start, ~0.1-0.3 ms on these VMs, on the path between a
    transfer's completion and its report). Arming wakes the thread only when the new
    time is the earliest."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fire: Callable[[], None]) -> None:
        """Run ``fire`` at the monotonic time ``when``."""
        with self._wake:
            heapq.heappush(self._due, (when, next(self._seq), fire))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name,
                                                daemon=True)
                self._thread.start()
            elif self._due[0][2] is fire:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while (wait := self._due[0][0] - time.monotonic() if self._due else None) \
                        is None or wait > 0:
                    self._wake.wait(wait)
                fire = heapq.heappop(self._due)[2]
            try:
                fire()
            except Exception:  # one failing call must not stop the others
                log.exception("%s: a timed call failed", self._name)
