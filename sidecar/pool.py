"""The KV pool a sidecar registers with NIXL: host memory, or CUDA memory via torch.

One contiguous allocation backs the whole pool, so NIXL registers a single region
(registration pins memory on RDMA hosts and is slow per tensor). ``per_layer`` pools
carve that allocation into ``regions`` equal stretches (layer × K/V as vLLM lays
them out); ``block_major`` pools keep each block's bytes together.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from scheduler.transfer.plan import KvLayout, KvRegion, LayoutKind, MemType
from topology.errors import InputError, UnschedulableError

Bytes = npt.NDArray[np.uint8]
MemFlag = Literal["dram", "vram"]


def _torch() -> Any:
    """torch, imported only for VRAM pools (it is optional and heavy)."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise UnschedulableError(["--mem vram needs torch with CUDA; install it "
                                  "(docs/install-gpu.md) or use --mem dram"]) from exc


class KvPool:
    """A KV pool of ``num_blocks`` blocks of ``block_bytes`` in one allocation."""

    def __init__(self, *, num_blocks: int, block_bytes: int, kind: LayoutKind = "block_major",
                 regions: int = 1, mem: MemFlag = "dram", device_id: int = 0) -> None:
        if num_blocks <= 0 or block_bytes <= 0:
            raise InputError("--kv-blocks and --block-bytes must be positive")
        count = 1 if kind == "block_major" else regions
        if count <= 0 or block_bytes % count:
            raise InputError(f"--block-bytes {block_bytes} is not divisible into {count} "
                             "per-layer regions")
        self.num_blocks = num_blocks
        self.kind: LayoutKind = kind
        self.region_block_bytes = block_bytes // count
        self.region_count = count
        self.mem_type: MemType = "VRAM" if mem == "vram" else "DRAM"
        self.device_id = device_id
        self.nbytes = num_blocks * block_bytes
        self._host: Bytes | None = None
        self._cuda: Any = None
        if mem == "vram":
            torch = _torch()
            if not torch.cuda.is_available():
                raise UnschedulableError(["--mem vram but torch sees no CUDA device"])
            self._cuda = torch.zeros(self.nbytes, dtype=torch.uint8, device=f"cuda:{device_id}")
            self.base_addr = int(self._cuda.data_ptr())
        else:
            self._host = np.zeros(self.nbytes, dtype=np.uint8)
            self.base_addr = int(self._host.ctypes.data)

    @classmethod
    def adopt(cls, buffer: Any, *, num_blocks: int, block_bytes: int,
              kind: LayoutKind = "block_major", regions: int = 1, device_id: int = 0) -> KvPool:
        """Wrap an engine's own KV allocation: a contiguous uint8 numpy array (host) or
        torch CUDA tensor of exactly ``num_blocks × block_bytes`` bytes, laid out as
        ``kind``/``regions`` describe. The engine keeps owning the memory."""
        pool = cls.__new__(cls)
        count = 1 if kind == "block_major" else regions
        size = int(buffer.numel() if hasattr(buffer, "numel") else buffer.size)
        if size != num_blocks * block_bytes or count <= 0 or block_bytes % count:
            raise InputError(f"engine buffer of {size} bytes does not hold {num_blocks} "
                             f"blocks of {block_bytes} bytes in {count} region(s)")
        pool.num_blocks, pool.kind, pool.region_count = num_blocks, kind, count
        pool.region_block_bytes = block_bytes // count
        pool.device_id, pool.nbytes = device_id, size
        is_cuda = bool(getattr(buffer, "is_cuda", False))
        pool.mem_type = "VRAM" if is_cuda else "DRAM"
        pool._host, pool._cuda = (None, buffer) if is_cuda else (buffer, None)
        pool.base_addr = int(buffer.data_ptr() if is_cuda else buffer.ctypes.data)
        return pool

    @property
    def block_bytes(self) -> int:
        """Bytes of one whole block (every region)."""
        return self.region_block_bytes * self.region_count

    def layout(self) -> KvLayout:
        """The pool's layout as the scheduler sees it."""
        span = self.region_block_bytes * self.num_blocks
        names = ["kv"] if self.kind == "block_major" else [
            f"layer{r // 2}.{'kv'[r % 2]}" for r in range(self.region_count)]
        return KvLayout(kind=self.kind, num_blocks=self.num_blocks, regions=tuple(
            KvRegion(name=names[r], base_addr=self.base_addr + r * span,
                     block_bytes=self.region_block_bytes) for r in range(self.region_count)))

    def registration(self) -> list[tuple[int, int, int, str]]:
        """``(addr, nbytes, device, tag)`` rows for ``register_memory``: the one allocation."""
        return [(self.base_addr, self.nbytes, self.device_id, "")]

    def _offset(self, region: int, block: int) -> int:
        return region * self.region_block_bytes * self.num_blocks + block * self.region_block_bytes

    def read(self, region: int, block: int) -> Bytes:
        """A host copy of one block's slot in one region."""
        start = self._offset(region, block)
        if self._host is not None:
            return self._host[start:start + self.region_block_bytes].copy()
        data: Bytes = self._cuda[start:start + self.region_block_bytes].cpu().numpy()
        return data

    def write(self, region: int, block: int, data: Bytes) -> None:
        """Overwrite one block's slot in one region with ``data``."""
        start = self._offset(region, block)
        if self._host is not None:
            self._host[start:start + self.region_block_bytes] = data
        else:
            torch = _torch()
            self._cuda[start:start + self.region_block_bytes] = torch.from_numpy(data).to(
                self._cuda.device)

    def close(self) -> None:
        """Drop the allocation (after NIXL deregistered it)."""
        self._host = None
        self._cuda = None
