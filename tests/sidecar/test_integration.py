"""Real processes on loopback: a scheduler, sidecars with NIXL agents, real bytes moved.

The destination sidecar's fake engine checks, byte for byte after every transfer, the
moved blocks (the source's bytes) and every block it still holds from earlier transfers
(their bytes unchanged), and reports ``verified``; the tests assert on those reports
and on the records.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sidecar.harness import ROOT, cluster, free_port, wait_for

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

BLOCK = 16384
PER_LAYER = ("--layout", "per_layer", "--regions", "4")


def _report(record: dict[str, object], worker: str) -> dict[str, object]:
    reports = record["reports"]
    assert isinstance(reports, list)
    matches = [r for r in reports if r["worker"] == worker]
    assert matches, record
    result: dict[str, object] = matches[-1]
    return result


def test_read_full_then_delta_moves_only_missing_blocks(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ") as c:
        c.sidecar("prefill-0", block_bytes=BLOCK, extra=PER_LAYER)
        c.sidecar("decode-0", block_bytes=BLOCK, extra=PER_LAYER)
        assert c.submit(src="prefill-0", dst="decode-0", src_blocks=list(range(8)),
                        plan_id="full").status_code == 201
        full = c.finished("full")
        assert full["state"] == "done", full
        assert full["plan"]["initiator"] == "decode-0"
        assert full["plan"]["dst_blocks"] == list(range(8))   # from the free list
        assert full["plan"]["descriptors"] == 4                # one run × 4 regions
        initiator = _report(full, "decode-0")
        assert initiator["verified"] is True
        # The stages of the transfer, in order on one clock (one host): queued, handed to
        # the long-poll, received by the sidecar, NIXL request created, done, reported.
        stamps = [full["created_at"], full["delivered_at"], initiator["received_at"],
                  initiator["started_at"], initiator["started_at"] + initiator["duration_s"],
                  full["finished_at"]]
        assert all(isinstance(t, float) for t in stamps), stamps
        assert stamps == sorted(stamps), stamps

        # The decode side holds the first 8 blocks of a 12-block chain: move 4.
        response = c.submit(src="prefill-0", dst="decode-0", src_blocks=list(range(12)),
                            cached_prefix=8, plan_id="delta")
        delta = c.finished("delta")
        assert response.status_code == 201 and delta["state"] == "done", delta
        assert delta["plan"]["src_blocks"] == [8, 9, 10, 11]
        assert delta["plan"]["dst_blocks"] == [8, 9, 10, 11]
        dst = _report(delta, "decode-0")
        # verified covers the held blocks too: 0-7 kept the first transfer's bytes.
        assert dst["verified"] is True and dst["bytes"] == 4 * BLOCK
        # The prefill side serves the reads without a job or a report of its own; it
        # hears of each transfer once it ended (its engine may reuse the blocks).
        assert [r["worker"] for r in full["reports"] + delta["reports"]] == ["decode-0"] * 2
        prefill = c.sidecars["prefill-0"]
        assert prefill.stop(signal.SIGTERM) == 0
        state = prefill.state()
        assert state["jobs_received"].keys() == {"complete", "writes"}, state
        assert state["jobs_received"]["complete"] == 2 and state["outcomes"] == {"ok": 2}
        assert (state["sent_transfers"], state["sent_blocks"]) == (2, 12), state
        assert state["reports_streamed"] == 0, state


def test_fake_engines_end_their_requests_so_a_small_pool_serves_for_ever(
        tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ") as c:
        c.sidecar("prefill-0", kv_blocks=8, block_bytes=BLOCK)
        decode = c.sidecar("decode-0", kv_blocks=8, block_bytes=BLOCK, decode_ms=50)
        for i in range(6):  # 24 blocks through a pool of 8
            assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[0, 1, 2, 3],
                            plan_id=f"turn-{i}").status_code == 201
            record = c.finished(f"turn-{i}")
            assert record["state"] == "done"
            wait_for(lambda: c.free_blocks("decode-0") == 8, 10,
                     "the decode request to end and its blocks to come back")
            assert c.transfer(f"turn-{i}")["dst_released"] is True
        assert decode.stop(signal.SIGTERM) == 0
        state = decode.state()  # every release went on the report stream
        assert (state["releases_streamed"], state["releases_posted"]) == (6, 0), state


def test_write_mode_scattered_blocks_and_clean_shutdown(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="WRITE") as c:
        prefill = c.sidecar("prefill-0", block_bytes=BLOCK)
        decode = c.sidecar("decode-0", block_bytes=BLOCK)
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[3, 4, 5, 9, 20],
                 dst_blocks=[10, 11, 12, 1, 31], plan_id="push")
        record = c.finished("push")
        assert record["state"] == "done", record
        assert record["plan"]["initiator"] == "prefill-0"
        assert record["plan"]["descriptors"] == 3
        assert _report(record, "decode-0")["verified"] is True
        assert _report(record, "prefill-0")["bytes"] == 5 * BLOCK

        assert decode.stop(signal.SIGTERM) == 0
        state = decode.state()
        assert state["state"] == "stopped" and state["drained"] is True
        assert state["deregistered"] is True and state["scheduler_deregistered"] is True
        assert state["leaked_handles"] == 0
        assert c.workers() == ["prefill-0"]
        assert prefill.stop(signal.SIGTERM) == 0
        assert prefill.state()["peers_removed"] == 1   # it had loaded decode-0


def test_killed_peer_fails_within_deadline_and_sidecar_keeps_serving(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ", deadline_s=4.0) as c:
        victim = c.sidecar("prefill-0", block_bytes=BLOCK)
        c.sidecar("decode-0", block_bytes=BLOCK, extra=("--debug-hold", "0.8"))
        # A first transfer connects the two agents, so the kill hits a live connection.
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[0], plan_id="warm")
        assert c.finished("warm")["state"] == "done"
        c.submit(src="prefill-0", dst="decode-0", src_blocks=list(range(16)), plan_id="doomed")
        time.sleep(0.3)                     # the decode sidecar holds the job before posting
        victim.stop(signal.SIGKILL)
        started = time.monotonic()
        record = c.finished("doomed", reports=1, timeout_s=10)
        assert time.monotonic() - started < 4.0 + 1.0
        assert record["state"] == "failed" and record["recompute"] is True, record
        dst = _report(record, "decode-0")
        assert dst["outcome"] in ("failed", "timeout") and dst["recompute"] is True

        c.sidecar("prefill-1", block_bytes=BLOCK)
        c.submit(src="prefill-1", dst="decode-0", src_blocks=[0, 1], plan_id="after")
        after = c.finished("after")
        assert after["state"] == "done" and _report(after, "decode-0")["verified"] is True
        assert c.sidecars["decode-0"].stop() == 0
        final = c.sidecars["decode-0"].state()
        assert final["recompute"] == ["doomed"]
        assert final["leaked_handles"] == 0 and final["deregistered"] is True


def test_killed_writer_makes_waiting_decode_side_recompute(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="WRITE", lease_ttl_s=1.5, deadline_s=8.0) as c:
        writer = c.sidecar("prefill-0", block_bytes=BLOCK, extra=("--debug-hold", "0.8"))
        c.sidecar("decode-0", block_bytes=BLOCK)
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[0, 1, 2], plan_id="orphan")
        time.sleep(0.3)
        writer.stop(signal.SIGKILL)
        started = time.monotonic()
        # The writer's lease lapses (1.5 s) long before the 8 s deadline: the scheduler
        # fails the transfer and tells the waiting decode side to stop and recompute.
        record = c.finished("orphan", reports=1, timeout_s=8)
        assert time.monotonic() - started < 4.0
        assert record["state"] == "failed" and record["recompute"] is True
        assert "lease" in record["error"]
        assert _report(record, "decode-0")["outcome"] == "aborted"


def test_hung_writer_cannot_corrupt_blocks_handed_out_again(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="WRITE", lease_ttl_s=1.5, deadline_s=4.0) as c:
        writer = c.sidecar("prefill-0", block_bytes=BLOCK, extra=("--debug-hold", "0.8"))
        c.sidecar("decode-0", block_bytes=BLOCK)
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[0, 1], plan_id="stalled")
        time.sleep(0.3)
        writer.popen.send_signal(signal.SIGSTOP)          # hung, not dead
        try:
            record = c.finished("stalled", reports=1, timeout_s=8)
            assert record["state"] == "failed" and record["recompute"] is True
            assert _report(record, "decode-0")["outcome"] == "aborted"
        finally:
            writer.popen.send_signal(signal.SIGCONT)      # it wakes up and may still write
        # It re-registers (new epoch) and serves again; the decode side's pool is still
        # consistent: the stalled plan's blocks are undefined, everything else verified.
        wait_for(lambda: c.transfer("stalled")["reports"][-1]["worker"] == "prefill-0",
                 10, "the stalled writer's own report")
        wait_for(lambda: "prefill-0" in c.workers(), 10, "the writer to re-register")
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[5], plan_id="later")
        later = c.finished("later")
        assert later["state"] == "done" and later["plan"]["src"]["epoch"] == 2
        assert later["plan"]["dst_blocks"] != [0] and later["plan"]["dst_blocks"] != [1]
        assert _report(later, "decode-0")["verified"] is True


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "api.cli.main", "sidecar", "--scheduler",
            f"http://127.0.0.1:{free_port()}", "--name", "lonely", "--kv-blocks", "4",
            "--block-bytes", "4096", "--connect-timeout", "1"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert b"scheduler unavailable" in done.stderr


def test_wait_for_gives_up() -> None:
    with pytest.raises(AssertionError, match="timed out"):
        wait_for(lambda: False, 0.05, "nothing")
