"""The seam between a sidecar and its serving engine, and a fake engine for tests.

A real integration implements :class:`EngineHook`: it hands over the KV memory as a
:class:`~sidecar.pool.KvPool` (built around the engine's tensors), names the content
of blocks for KV events, and hears about every finished or failed transfer, so the
decode side can recompute instead of waiting for KV that will not arrive.

:class:`FakeEngine` fills every block with bytes derived from (worker, block, region),
so the destination can regenerate what must have arrived and check it byte for byte.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np

from scheduler.transfer.plan import TransferPlan
from sidecar.pool import Bytes, KvPool

VerifyMode = Literal["full", "moved", "off"]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


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
    """An engine stand-in with deterministic, verifiable block contents."""

    def __init__(self, pool: KvPool, worker: str, verify: VerifyMode = "full") -> None:
        self._pool = pool
        self.worker = worker
        self.verify_mode: VerifyMode = verify
        #: Which (worker, block) each local block's bytes came from; None: undefined (the
        #: destination of a failed transfer, which a late writer may still have touched).
        self.content: list[tuple[str, int] | None] = [(worker, b)
                                                       for b in range(pool.num_blocks)]
        self.recompute: list[str] = []
        self.fill()

    @property
    def pool(self) -> KvPool:
        """The KV memory of this fake engine."""
        return self._pool

    def fill(self) -> None:
        """Write every block's own pattern."""
        for block in range(self._pool.num_blocks):
            self.content[block] = (self.worker, block)
            for region in range(self._pool.region_count):
                self._pool.write(region, block, pattern(self.worker, block, region,
                                                        self._pool.region_block_bytes))

    def block_hashes(self, blocks: Sequence[int]) -> list[int]:
        """Hash of each block's origin: equal bytes give equal hashes across workers."""
        return [int.from_bytes(hashlib.blake2b(repr(self.content[b]).encode(),
                                               digest_size=8).digest(), "big")
                for b in blocks]

    def on_received(self, plan: TransferPlan) -> bool | None:
        """Record where the new blocks came from and check the pool byte for byte."""
        for src, dst in zip(plan.src_blocks, plan.dst_blocks, strict=True):
            self.content[dst] = (plan.src.worker, src)
        if self.verify_mode == "off":
            return None
        blocks = (range(self._pool.num_blocks) if self.verify_mode == "full"
                  else plan.dst_blocks)
        return not self.mismatches(blocks)

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
        its destination, treat the target blocks as undefined from now on."""
        if plan.dst.worker == self.worker:
            self.recompute.append(plan.plan_id)
            for block in plan.dst_blocks:
                self.content[block] = None
