"""Several initiator transfers in flight in one sidecar (``--max-inflight``), with real
processes and NIXL: the job thread posts the next job's request while earlier ones are
still being completed and reported on the ``inflight`` thread. Every transfer must move
the right bytes (the destination's fake engine checks them, and every block it still
holds, byte for byte), and no more than the bound may be in flight at once.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.sidecar.harness import cluster

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

BLOCK = 1 << 20
COUNT = 12
PER_TRANSFER = 4


@pytest.mark.parametrize("bound", [1, 3])
def test_transfers_in_flight_at_once_all_verify_within_the_bound(tmp_path: Path,
                                                                  bound: int) -> None:
    with cluster(tmp_path, deadline_s=30.0) as c:
        c.sidecar("prefill-0", kv_blocks=COUNT * PER_TRANSFER, block_bytes=BLOCK)
        decode = c.sidecar("decode-0", kv_blocks=COUNT * PER_TRANSFER, block_bytes=BLOCK,
                           extra=("--max-inflight", str(bound)))
        requests = [{"src": "prefill-0", "dst": "decode-0", "plan_id": f"t{i}",
                     "src_blocks": [PER_TRANSFER * i + b for b in range(PER_TRANSFER)]}
                    for i in range(COUNT)]
        # all queued at once: the decode sidecar finds the next job waiting after each post
        with ThreadPoolExecutor(COUNT) as pool:
            answers = list(pool.map(lambda r: c.submit(**r).status_code, requests))
        assert answers == [201] * COUNT
        records = [c.finished(r["plan_id"], timeout_s=60) for r in requests]
        assert [r["state"] for r in records] == ["done"] * COUNT, records
        mine = [next(p for p in r["reports"] if p["worker"] == "decode-0") for r in records]
        assert [(p["verified"], p["bytes"]) for p in mine] == \
            [(True, PER_TRANSFER * BLOCK)] * COUNT
        assert decode.stop(signal.SIGTERM) == 0
        state = decode.state()
    assert state["outcomes"] == {"ok": COUNT} and state["drained"] is True
    assert state["leaked_handles"] == 0
    assert 1 <= state["inflight_peak"] <= bound
    if bound > 1:  # queued jobs were posted while earlier transfers were being reported
        assert state["handed_off"] > 0 and state["inflight_peak"] > 1


def test_max_inflight_below_one_is_refused(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        proc = c.sidecar("decode-0", extra=("--max-inflight", "0"), wait=False)
        assert proc.popen.wait(60) == 2
        assert "--max-inflight: must be at least 1, not 0" in proc.text()


def test_a_submission_that_prefers_to_wait_answers_with_the_ended_transfer(
        tmp_path: Path) -> None:
    """``Prefer: wait=S`` on ``POST /v1/transfers``: one request from submission to the
    initiator's report, instead of a submission and a long-poll."""
    with cluster(tmp_path) as c:
        c.sidecar("prefill-0", kv_blocks=8, block_bytes=BLOCK)
        c.sidecar("decode-0", kv_blocks=8, block_bytes=BLOCK)
        answer = c.http.post(f"{c.url}/v1/transfers", headers={"Prefer": "wait=20"},
                             json={"src": "prefill-0", "dst": "decode-0",
                                   "src_blocks": [0, 1], "plan_id": "waited"})
        assert answer.status_code == 201
        record = answer.json()
        assert record["state"] == "done", record
        initiator = next(r for r in record["reports"] if r["role"] == "initiator")
        assert initiator["verified"] is True and initiator["bytes"] == 2 * BLOCK
        assert int(answer.headers["x-record-version"]) >= 2
