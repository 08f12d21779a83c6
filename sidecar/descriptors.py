"""Pure descriptor arithmetic of the sidecar (numpy only, no NIXL): rows and indices."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from scheduler.transfer.plan import KvLayout

Indices = npt.NDArray[np.int32]


def descriptor_rows(layout: KvLayout, device_id: int) -> npt.NDArray[np.uint64]:
    """``(addr, len, dev)`` rows, one per (region, block), region-major."""
    rows = np.empty((len(layout.regions) * layout.num_blocks, 3), dtype=np.uint64)
    blocks = np.arange(layout.num_blocks, dtype=np.uint64)
    for r, region in enumerate(layout.regions):
        part = rows[r * layout.num_blocks:(r + 1) * layout.num_blocks]
        part[:, 0] = np.uint64(region.base_addr) + blocks * np.uint64(region.block_bytes)
        part[:, 1] = region.block_bytes
        part[:, 2] = device_id
    return rows


def row_indices(layout: KvLayout, blocks: tuple[int, ...]) -> Indices:
    """Rows of ``blocks`` in every region, region-major (runs stay index runs)."""
    ids = np.fromiter(blocks, dtype=np.int32, count=len(blocks))
    if len(layout.regions) == 1:
        return ids
    offsets = np.arange(len(layout.regions), dtype=np.int32) * np.int32(layout.num_blocks)
    out: Indices = (offsets[:, None] + ids[None, :]).ravel()
    return out
