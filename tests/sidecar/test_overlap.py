"""Overlapping transfers into one destination, with real sidecars and NIXL: each one's
byte check must hold while the others are still writing other blocks of the pool.

The fake engine used to check its whole pool after every transfer, free blocks
included. It took blocks another transfer was still writing for settled ones and
reported "destination bytes differ" for transfers that had moved every byte right (2 of
the first 7 at a cold start, when first connections make transfers slow and
overlapping; with ``--verify moved`` every one of them verified).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.sidecar.harness import cluster

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

BLOCK = 1 << 20
SOURCES = ("prefill-0", "prefill-1", "prefill-2")
PER_SOURCE = 4


@pytest.mark.parametrize("mode", ["READ", "WRITE"])
def test_overlapping_transfers_into_one_pool_all_verify(tmp_path: Path, mode: str) -> None:
    with cluster(tmp_path, mode=mode, deadline_s=20.0) as c:
        for name in SOURCES:
            c.sidecar(name, kv_blocks=16, block_bytes=BLOCK)
        c.sidecar("decode-0", kv_blocks=64, block_bytes=BLOCK, extra=("--executors", "8"))
        requests = [{"src": src, "dst": "decode-0", "src_blocks": [4 * i + b for b in range(4)],
                     "plan_id": f"{src}-{i}"} for src in SOURCES for i in range(PER_SOURCE)]
        # all submitted at once: every first connection is made while others transfer
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda r: c.submit(**r).status_code, requests))
        assert answers == [201] * len(requests)
        records = [c.finished(r["plan_id"], timeout_s=30) for r in requests]
        outcomes = [(r["plan"]["plan_id"], r["state"], r["error"]) for r in records]
        assert all(state == "done" for _, state, _ in outcomes), outcomes
        checked = [next(p for p in r["reports"] if p["worker"] == "decode-0")["verified"]
                   for r in records]
        assert checked == [True] * len(records)
