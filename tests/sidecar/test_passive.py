"""A READ's source is a passive target (real processes on loopback): it gets no
``await`` job and sends no report; it hears of each transfer once it ended, several
``complete`` jobs to one write, or an ``abort`` with the plan, and its engine hook is
told either way; it keeps its memory registered while a read of it is pending."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.sidecar.harness import cluster, wait_for

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

BLOCK = 16384


def test_a_read_source_gets_no_await_and_several_completes_to_a_write(
        tmp_path: Path) -> None:
    count = 16
    with cluster(tmp_path, mode="READ") as c:
        prefill = c.sidecar("prefill-0", block_bytes=BLOCK)
        c.sidecar("decode-0", block_bytes=BLOCK)
        for i in range(count):  # all at once: the decode side runs them back to back
            assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[i],
                            dst_blocks=[i], plan_id=f"r{i}").status_code == 201
        for i in range(count):
            record = c.finished(f"r{i}")
            assert record["state"] == "done", record
            assert [(r["worker"], r["verified"]) for r in record["reports"]] == [
                ("decode-0", True)]
        assert prefill.stop(signal.SIGTERM) == 0
        state = prefill.state()
        jobs = state["jobs_received"]
        assert jobs.keys() == {"complete", "writes"} and jobs["complete"] == count, state
        # The scheduler holds completes back a little and writes them together.
        assert jobs["writes"] < count, state
        assert (state["sent_transfers"], state["sent_blocks"]) == (count, count), state
        assert state["outcomes"] == {"ok": count} and state["reports_streamed"] == 0, state
        assert state["drained"] is True


def test_a_failed_read_tells_its_source_with_the_plan(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ", lease_ttl_s=1.5, deadline_s=8.0) as c:
        prefill = c.sidecar("prefill-0", block_bytes=BLOCK)
        decode = c.sidecar("decode-0", block_bytes=BLOCK, extra=("--debug-hold", "0.8"))
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[0, 1], plan_id="lost")
        time.sleep(0.3)  # the decode side holds the job before posting
        decode.stop(signal.SIGKILL)
        # Its lease lapses (1.5 s): the scheduler fails the transfer and tells the source.
        record = c.finished("lost", reports=0, timeout_s=8)
        assert record["state"] == "failed" and "lease" in record["error"], record
        assert record["reports"] == []
        assert prefill.stop(signal.SIGTERM) == 0
        state = prefill.state()
        assert state["jobs_received"].get("abort") == 1, state
        assert state["outcomes"] == {"aborted": 1} and state["sent_failed"] == 1, state
        assert state["reports_streamed"] == 0, state


def test_an_expired_read_tells_its_source(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ", lease_ttl_s=6.0, deadline_s=1.0) as c:
        prefill = c.sidecar("prefill-0", block_bytes=BLOCK)
        decode = c.sidecar("decode-0", block_bytes=BLOCK, extra=("--debug-hold", "0.5"))
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[0], plan_id="late")
        time.sleep(0.2)
        decode.popen.send_signal(signal.SIGSTOP)  # hung, lease still valid: it expires
        try:
            record = c.finished("late", reports=0, timeout_s=8)
        finally:
            decode.popen.send_signal(signal.SIGCONT)
        assert record["state"] == "expired", record
        assert prefill.stop(signal.SIGTERM) == 0
        state = prefill.state()
        assert state["jobs_received"].get("abort") == 1, state
        assert state["outcomes"] == {"aborted": 1} and state["sent_failed"] == 1, state


def test_a_draining_source_keeps_serving_a_pending_read(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ", deadline_s=8.0) as c:
        prefill = c.sidecar("prefill-0", block_bytes=BLOCK)
        c.sidecar("decode-0", block_bytes=BLOCK, extra=("--debug-hold", "1.0"))
        c.submit(src="prefill-0", dst="decode-0", src_blocks=[0, 1, 2], plan_id="drain")
        time.sleep(0.2)  # the decode side holds the job: the read has not started yet
        started = time.monotonic()
        assert prefill.stop(signal.SIGTERM) == 0  # waits until the read ended
        assert time.monotonic() - started > 0.5
        record = c.finished("drain", timeout_s=5)
        assert record["state"] == "done", record
        assert record["reports"][0]["verified"] is True
        state = prefill.state()
        assert state["drained"] is True and state["outcomes"] == {"ok": 1}, state
        assert state["sent_blocks"] == 3 and state["deregistered"] is True, state


def test_a_draining_source_refuses_new_transfers_at_once(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ", deadline_s=8.0) as c:
        prefill = c.sidecar("prefill-0", block_bytes=BLOCK)
        c.sidecar("decode-0", block_bytes=BLOCK, extra=("--debug-hold", "2.5"))
        assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[0, 1],
                        plan_id="before").status_code == 201
        time.sleep(0.2)  # the decode side holds the job: the read has not started yet
        assert not c.draining("prefill-0")
        prefill.popen.send_signal(signal.SIGTERM)
        wait_for(lambda: c.draining("prefill-0"), 5, "the drain to reach the scheduler")
        for src, dst, plan_id in (("prefill-0", "decode-0", "as-src"),
                                  ("decode-0", "prefill-0", "as-dst")):
            started = time.monotonic()
            refused = c.submit(src=src, dst=dst, src_blocks=[4], plan_id=plan_id)
            assert time.monotonic() - started < 2.0
            assert refused.status_code == 409, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert "'prefill-0' is draining" in refused.json()["detail"], refused.text
            assert c.http.get(f"{c.url}/v1/transfers/{plan_id}").status_code == 404
        # Refused while the one from before is still going on; that one ends done.
        assert c.transfer("before")["state"] == "pending"
        assert prefill.stop(signal.SIGTERM) == 0  # exits once the read ended
        record = c.finished("before", timeout_s=10)
        assert record["state"] == "done", record
        assert record["reports"][0]["verified"] is True
        state = prefill.state()
        assert state["drained"] is True and state["drain_announced"] is True, state
        assert state["outcomes"] == {"ok": 1} and state["sent_blocks"] == 2, state
        assert state["stale_dropped"] == 0 and state["deregistered"] is True, state
        assert "prefill-0" not in c.workers()
