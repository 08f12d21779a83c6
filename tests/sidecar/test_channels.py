"""The job stream and the report stream between the scheduler and its sidecars, over
real HTTP against a ``toposched serve`` process (and real sidecars at the end)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from scheduler.transfer.plan import TransferReport
from sidecar.client import ReportStream, SchedulerClient
from sidecar.errors import AuthenticationError
from tests.scheduler.transfer.builders import registration
from tests.sidecar.harness import cluster, wait_for
from topology.errors import NotFoundError

pytestmark = [pytest.mark.process]


def _register(c: httpx.Client, url: str, name: str) -> str:
    """Register a worker (fake metadata); returns its own token."""
    reg = registration(name, num_blocks=16, base=0x1000_0000 * (1 + len(name)))
    answer = c.post(f"{url}/v1/workers", json=reg.model_dump(mode="json"))
    assert answer.status_code == 201, answer.text
    return answer.headers["x-worker-token"]


def test_a_queued_job_is_written_to_the_open_job_stream_at_once(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        _register(c.http, c.url, "prefill-0")
        token = _register(c.http, c.url, "decode-0")
        stream_url = f"{c.url}/v1/sidecars/decode-0/jobs/stream"
        own = {"Authorization": f"Bearer {token}"}
        with c.http.stream("GET", stream_url, params={"keepalive_s": 30}, headers=own,
                           timeout=60) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("application/x-ndjson")
            lines = stream.iter_lines()
            assert next(lines) == ""  # the stream is open: a keep-alive line at once
            for plan_id in ("s1", "s2"):  # one stream, job after job
                assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[0],
                                plan_id=plan_id).status_code == 201
                job = json.loads(next(line for line in lines if line))
                assert (job["kind"], job["plan_id"]) == ("execute", plan_id)
                assert job["plan"]["initiator"] == "decode-0"
                # stamped when written: the queue stage of the record
                delivered = wait_for(lambda p=plan_id: c.transfer(p)["delivered_at"], 30,
                                     "delivered_at")
                assert delivered >= c.transfer(plan_id)["created_at"]
        missing = c.http.get(f"{c.url}/v1/sidecars/ghost/jobs/stream")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        # a worker's own token may not read another worker's jobs
        other = c.http.get(f"{c.url}/v1/sidecars/prefill-0/jobs/stream", headers=own)
        assert other.status_code == 403
        anonymous = httpx.get(stream_url, timeout=10)
        assert anonymous.status_code == 401


def test_the_sidecar_client_reads_jobs_off_the_stream_as_they_are_queued(
        tmp_path: Path) -> None:
    """The client's own reader (a socket, no HTTP client): jobs as they come, refusals
    as the errors the sidecar acts on, the end of the stream when the worker is gone."""
    with cluster(tmp_path) as c:
        _register(c.http, c.url, "prefill-0")
        token = _register(c.http, c.url, "decode-0")
        client = SchedulerClient(c.url, token=token, timeout_s=10)
        try:
            jobs = client.job_stream("decode-0", keepalive_s=0.2)  # keep-alive lines too
            for plan_id in ("j1", "j2", "j3"):
                assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[0],
                                plan_id=plan_id).status_code == 201
            taken = [next(jobs) for _ in range(3)]
            assert [(j.kind, j.plan_id) for j in taken] == [("execute", f"j{i}")
                                                            for i in (1, 2, 3)]
            assert taken[0].plan is not None and taken[0].plan.initiator == "decode-0"
            assert c.http.delete(f"{c.url}/v1/workers/decode-0").status_code == 204
            assert list(jobs) == []  # removed: the scheduler ends the stream
            with pytest.raises(NotFoundError):
                next(client.job_stream("decode-0", keepalive_s=1))
            with pytest.raises(AuthenticationError):  # its own token, another worker
                next(client.job_stream("prefill-0", keepalive_s=1))
        finally:
            client.close()


def test_the_job_stream_says_when_the_next_job_can_be_read_at_once(tmp_path: Path) -> None:
    """``ready()``: what the sidecar's job thread asks before it drives and reports a
    transfer itself (else it posts the next job first)."""
    with cluster(tmp_path) as c:
        _register(c.http, c.url, "prefill-0")
        token = _register(c.http, c.url, "decode-0")
        client = SchedulerClient(c.url, token=token, timeout_s=10)
        try:
            with client.job_stream("decode-0", keepalive_s=30) as jobs:
                assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[0],
                                plan_id="k1").status_code == 201
                assert next(jobs).plan_id == "k1"
                assert not jobs.ready()  # nothing more queued: the next read would wait
                for plan_id in ("k2", "k3"):
                    assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[1],
                                    plan_id=plan_id).status_code == 201
                wait_for(jobs.ready, 10, "the next jobs on the stream")
                assert next(jobs).plan_id == "k2"
                wait_for(jobs.ready, 10, "the third job on the stream")
                assert next(jobs).plan_id == "k3"
                assert not jobs.ready()
        finally:
            client.close()


def test_reports_on_the_open_report_stream_are_recorded_as_they_arrive(
        tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        _register(c.http, c.url, "prefill-0")
        token = _register(c.http, c.url, "decode-0")
        for plan_id in ("r1", "r2"):
            assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[0],
                            plan_id=plan_id).status_code == 201
        stream = ReportStream(c.url, timeout_s=10)
        try:
            def send(plan_id: str, worker: str = "decode-0") -> bool:
                report = TransferReport(plan_id=plan_id, worker=worker, role="initiator",
                                        outcome="ok", bytes=4096)
                return stream.send("decode-0", report.model_dump_json().encode(), token)

            assert send("r1")
            # recorded while the body is still open: no request per report
            record = c.http.get(f"{c.url}/v1/transfers/r1",
                                params={"wait_s": 30, "ended": True}, timeout=60).json()
            assert record["state"] == "done" and record["reports"][0]["worker"] == "decode-0"
            assert send("r2", worker="prefill-0")  # not this stream's worker: refused...
            assert send("r2")                      # ...and the stream goes on
            record = c.http.get(f"{c.url}/v1/transfers/r2",
                                params={"wait_s": 30, "ended": True}, timeout=60).json()
            assert record["state"] == "done"
            assert [r["worker"] for r in record["reports"]] == ["decode-0"]
        finally:
            stream.close()
        # the shared worker token may not write a worker's reports: the scheduler answers
        # (403) and the stream reports it cannot be used
        refused = ReportStream(c.url, timeout_s=10)
        try:
            line = TransferReport(plan_id="r1", worker="decode-0", role="target",
                                  outcome="ok").model_dump_json().encode()
            wait_for(lambda: not refused.send("decode-0", line, "harness-worker-token"), 30,
                     "the refused stream to be noticed")
        finally:
            refused.close()


def test_sidecars_take_jobs_and_send_reports_on_the_streams(tmp_path: Path) -> None:
    with cluster(tmp_path, mode="READ") as c:
        prefill = c.sidecar("prefill-0", block_bytes=16384)
        decode = c.sidecar("decode-0", block_bytes=16384)
        for i in range(3):
            assert c.submit(src="prefill-0", dst="decode-0", src_blocks=[i, i + 4],
                            plan_id=f"t{i}").status_code == 201
            record = c.finished(f"t{i}")
            assert record["state"] == "done", record
        assert decode.stop(signal.SIGTERM) == 0
        assert prefill.stop(signal.SIGTERM) == 0
        # every report and KV event went on the stream; the prefill side, a passive READ
        # target, reports nothing (its empty cache is an event)
        for side, reports in ((decode, 3), (prefill, 0)):
            state = side.state()
            assert (state["reports_streamed"], state["reports_posted"]) == (reports, 0), state
            assert state["events_streamed"] >= 1 and state["events_posted"] == 0, state
        # the decode side announced an empty cache, then each transfer's blocks
        assert decode.state()["events_streamed"] == 4
        assert "job stream failed" not in decode.text() + prefill.text()
