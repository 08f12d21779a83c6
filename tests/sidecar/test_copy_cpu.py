"""``--copy-cpu``: the sidecar's job thread runs alone on one CPU and its other threads
on the rest, checked in a real sidecar process (``/proc/PID/task/*/status``) around a
real transfer; a CPU the process may not use is refused before NIXL loads."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.sidecar.harness import cluster

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

BLOCK = 1 << 16


def _allowed(pid: int) -> dict[int, set[int]]:
    """tid → the CPUs that thread may run on."""
    out: dict[int, set[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        listed = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("Cpus_allowed_list:"))
        cpus: set[int] = set()
        for part in listed.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
        out[int(tid)] = cpus
    return out


def _cpu_ns(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])


def test_the_job_thread_runs_alone_on_its_cpu_and_moves_the_bytes(tmp_path: Path) -> None:
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:  # one CPU: nothing to give the job thread alone, and it says so
        with cluster(tmp_path) as c:
            proc = c.sidecar("decode-0", extra=("--copy-cpu", str(min(cpus))), wait=False)
            assert proc.popen.wait(60) == 2
            assert "a CPU of its own for the job thread needs two" in proc.text()
        return
    copy_cpu = max(cpus)
    with cluster(tmp_path) as c:
        c.sidecar("prefill-0", kv_blocks=8, block_bytes=BLOCK)
        decode = c.sidecar("decode-0", kv_blocks=8, block_bytes=BLOCK,
                           extra=("--copy-cpu", str(copy_cpu)))
        pid = decode.popen.pid
        allowed = _allowed(pid)
        alone = [tid for tid, mask in allowed.items() if mask == {copy_cpu}]
        assert len(alone) == 1, allowed  # the job thread, and only it
        job_thread = alone[0]
        # the sidecar's own threads (main, heartbeat, progress, inflight, watchdog) keep
        # off it; threads NIXL started before (UCX's) keep the whole mask
        assert sum(mask == cpus - {copy_cpu} for mask in allowed.values()) >= 5, allowed
        assert not any(copy_cpu in mask and mask != cpus and mask != {copy_cpu}
                       for mask in allowed.values())
        before = _cpu_ns(pid, job_thread)
        assert c.submit(src="prefill-0", dst="decode-0", plan_id="pinned",
                        src_blocks=[0, 1, 2]).status_code == 201
        record = c.finished("pinned", timeout_s=60)
        assert record["state"] == "done", record
        report = next(r for r in record["reports"] if r["worker"] == "decode-0")
        assert (report["verified"], report["bytes"]) == (True, 3 * BLOCK)
        assert _cpu_ns(pid, job_thread) > before  # the pinned thread did the work
        assert _allowed(pid)[job_thread] == {copy_cpu}
        assert decode.stop(signal.SIGTERM) == 0


def test_a_cpu_the_process_may_not_use_is_refused(tmp_path: Path) -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    with cluster(tmp_path) as c:
        proc = c.sidecar("decode-0", extra=("--copy-cpu", str(missing)), wait=False)
        assert proc.popen.wait(60) == 2
        assert f"--copy-cpu {missing}: CPU {missing} is not one this process may run on" \
            in proc.text()
