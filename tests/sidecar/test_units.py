"""Sidecar pieces that need no NIXL: pool, fake engine, descriptors, flags, client."""

from __future__ import annotations

import json
import os
import threading

import httpx
import numpy as np
import pytest

from sidecar.cli import add_arguments, config_from_args
from sidecar.client import SchedulerClient
from sidecar.config import SidecarConfig
from sidecar.descriptors import descriptor_rows, row_indices
from sidecar.engine import FakeEngine, pattern
from sidecar.errors import SchedulerUnavailableError
from sidecar.pool import KvPool
from tests.scheduler.transfer.builders import plan
from topology.errors import InputError, NotFoundError


def test_per_layer_pool_layout_is_region_major() -> None:
    pool = KvPool(num_blocks=8, block_bytes=4096, kind="per_layer", regions=4)
    layout = pool.layout()
    assert [r.name for r in layout.regions] == ["layer0.k", "layer0.v", "layer1.k", "layer1.v"]
    assert layout.regions[1].base_addr - layout.regions[0].base_addr == 8 * 1024
    assert layout.block_bytes == 4096 and pool.registration() == [(pool.base_addr, 32768, 0, "")]


def test_pool_rejects_indivisible_regions() -> None:
    with pytest.raises(InputError, match="not divisible"):
        KvPool(num_blocks=4, block_bytes=1000, kind="per_layer", regions=3)


def test_descriptor_rows_and_indices_keep_runs_contiguous() -> None:
    pool = KvPool(num_blocks=4, block_bytes=256, kind="per_layer", regions=2)
    rows = descriptor_rows(pool.layout(), device_id=0)
    assert rows.shape == (8, 3) and int(rows[1, 0] - rows[0, 0]) == 128
    assert int(rows[4, 0]) == pool.layout().regions[1].base_addr
    assert row_indices(pool.layout(), (1, 2)).tolist() == [1, 2, 5, 6]


def test_pattern_is_deterministic_and_distinct() -> None:
    assert np.array_equal(pattern("w", 3, 0, 100), pattern("w", 3, 0, 100))
    assert not np.array_equal(pattern("w", 3, 0, 100), pattern("w", 4, 0, 100))
    assert len(pattern("w", 0, 0, 13)) == 13


def test_fake_engine_verifies_received_blocks_byte_for_byte() -> None:
    pool = KvPool(num_blocks=64, block_bytes=4096)
    engine = FakeEngine(pool, "decode-0")
    p = plan(src_blocks=(0, 1), dst_blocks=(5, 6))
    for src, dst in zip(p.src_blocks, p.dst_blocks, strict=True):
        pool.write(0, dst, pattern("prefill-0", src, 0, 4096))
    assert engine.on_received(p) is True
    corrupted = pattern("prefill-0", 1, 0, 4096).copy()
    corrupted[17] ^= 1
    pool.write(0, 6, corrupted)
    assert engine.mismatches(range(64)) == [6]


def _receive(engine: FakeEngine, src_blocks: tuple[int, ...], dst_blocks: tuple[int, ...],
             plan_id: str = "req-1") -> bool | None:
    p = plan(src_blocks=src_blocks, dst_blocks=dst_blocks, plan_id=plan_id)
    for src, dst in zip(src_blocks, dst_blocks, strict=True):
        engine.pool.write(0, dst, pattern("prefill-0", src, 0, 4096))
    return engine.on_received(p)


def test_fake_engine_notices_a_held_block_that_changed() -> None:
    engine = FakeEngine(KvPool(num_blocks=64, block_bytes=4096), "decode-0")
    assert _receive(engine, (0,), (5,)) is True
    engine.pool.write(0, 5, pattern("x", 0, 0, 4096))  # held by a running request
    assert _receive(engine, (1,), (6,), "req-2") is False


def test_fake_engine_ignores_free_blocks_another_transfer_may_be_writing() -> None:
    engine = FakeEngine(KvPool(num_blocks=64, block_bytes=4096), "decode-0")
    engine.pool.write(0, 40, pattern("x", 0, 0, 4096)[:2048].repeat(2))  # half written
    assert _receive(engine, (0,), (5,)) is True
    assert engine.held == {5}


def test_fake_engine_ends_its_requests_and_releases_their_blocks() -> None:
    released: list[str] = []
    ended = threading.Event()

    def release(p: object) -> None:
        released.append(p.plan_id)
        ended.set()
    engine = FakeEngine(KvPool(num_blocks=64, block_bytes=4096), "decode-0", decode_s=0.01)
    engine.set_release(release)
    assert _receive(engine, (0, 1), (5, 6)) is True
    assert ended.wait(5.0) and released == ["req-1"]
    assert engine.held == set()
    never = FakeEngine(KvPool(num_blocks=8, block_bytes=4096), "decode-1", decode_s=None)
    never.set_release(release)
    assert _receive(never, (0,), (5,)) is True and never.held == {5}


def test_config_round_trips_through_its_flags() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    config = SidecarConfig(scheduler="http://s:1", name="w", kv_blocks=9, block_bytes=64,
                           layout="per_layer", regions=2, gpus=("h/gpu1",), model="m",
                           ucx_devices="mlx5_0:1", progress_thread=True, debug_hold_s=0.5,
                           max_inflight=3, copy_cpu=min(os.sched_getaffinity(0))
                           if len(os.sched_getaffinity(0)) > 1 else None)
    assert config_from_args(parser.parse_args(config.to_argv())) == config
    with pytest.raises(ValueError, match="max_inflight must be at least 1"):
        SidecarConfig(scheduler="http://s:1", name="w", kv_blocks=1, block_bytes=64,
                      max_inflight=0)


def _client(handler: httpx.MockTransport) -> SchedulerClient:
    return SchedulerClient("http://sched", retries=2, backoff_s=0.001, transport=handler)


def test_client_retries_then_reports_the_scheduler_unavailable() -> None:
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(SchedulerUnavailableError, match="failed after 3 tries"):
        _client(httpx.MockTransport(refuse)).heartbeat("w")
    assert len(calls) == 3


def test_client_maps_problems_without_retrying() -> None:
    calls = []

    def missing(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(404, json={"title": "not found", "detail": "unknown worker 'w'"})

    with pytest.raises(NotFoundError, match="unknown worker"):
        _client(httpx.MockTransport(missing)).heartbeat("w")
    assert len(calls) == 1


def test_client_long_poll_parses_jobs() -> None:
    job = {"kind": "abort", "plan_id": "p", "reason": "gone"}

    def jobs(request: httpx.Request) -> httpx.Response:
        assert request.url.params["wait_s"] == "1.5"
        return httpx.Response(200, content=json.dumps({"jobs": [job]}).encode())

    result = _client(httpx.MockTransport(jobs)).poll_jobs("w", 1.5)
    assert [j.kind for j in result] == ["abort"]


def test_control_plane_modules_do_not_load_nixl() -> None:
    # NIXL and OR-Tools crash when both are loaded in one process (see sidecar.cli), so
    # only the sidecar process itself may import sidecar.runner / sidecar.nixl_adapter.
    import subprocess
    import sys

    code = ("import sys, api.cli.main, api.app, sidecar.cli, sidecar.client; "
            "api.cli.main.build_parser(); print('nixl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_an_engine_can_hand_over_its_own_buffer() -> None:
    buffer = np.zeros(8 * 1024, dtype=np.uint8)
    pool = KvPool.adopt(buffer, num_blocks=8, block_bytes=1024, kind="per_layer", regions=2)
    assert pool.base_addr == buffer.ctypes.data and pool.mem_type == "DRAM"
    pool.write(1, 3, np.full(512, 7, dtype=np.uint8))
    assert buffer[8 * 512 + 3 * 512] == 7          # region 1, block 3: the engine's bytes
    with pytest.raises(InputError, match="does not hold"):
        KvPool.adopt(buffer, num_blocks=9, block_bytes=1024)


def test_a_failed_destination_block_is_undefined_not_a_mismatch() -> None:
    pool = KvPool(num_blocks=64, block_bytes=4096)
    engine = FakeEngine(pool, "decode-0")
    p = plan(src_blocks=(0,), dst_blocks=(9,))
    pool.write(0, 9, pattern("late-writer", 0, 0, 4096))   # a hung writer's late bytes
    engine.on_failed(p, "timeout")
    assert engine.mismatches(range(64)) == []


_STALE_PROBE = """
import json, threading, time
from collections import Counter
from scheduler.transfer.plan import Lease, TransferJob
from sidecar.config import SidecarConfig
from sidecar.runner import Sidecar
from tests.scheduler.transfer.builders import plan

heard = []
class Engine:
    def on_sent(self, plan_id, blocks): heard.append(["sent", plan_id, list(blocks)])
    def on_failed(self, plan, reason): heard.append(["failed", plan.plan_id])

s = Sidecar.__new__(Sidecar)  # no NIXL agent, no scheduler: dispatch alone
s.config = SidecarConfig(scheduler="http://s:1", name="prefill-0", kv_blocks=8,
                         block_bytes=64)
s.engine, s._lock, s.outcomes, s.stale_dropped = Engine(), threading.Lock(), Counter(), 0
s.lease = Lease(worker="prefill-0", epoch=2, ttl_s=1.0, expires_at=1.0)
old = plan(plan_id="old", notify="scheduler", epochs=(1, 1))
now = plan(plan_id="now", notify="scheduler", epochs=(2, 1))
for job in (TransferJob(kind="complete", plan_id="c-old", blocks=(0, 1), epoch=1),
            TransferJob(kind="abort", plan_id="old", plan=old, epoch=1),
            TransferJob(kind="abort", plan_id="old", plan=old),  # the plan's epoch
            TransferJob(kind="complete", plan_id="c-now", blocks=(2,), epoch=2),
            TransferJob(kind="complete", plan_id="c-unsaid", blocks=(3,)),
            TransferJob(kind="abort", plan_id="now", plan=now, epoch=2)):
    s.dispatch(job, time.monotonic())
print(json.dumps({"heard": heard, "dropped": s.stale_dropped, "outcomes": s.outcomes}))
"""


def test_a_sidecar_drops_the_complete_and_abort_of_an_earlier_registration() -> None:
    # sidecar.runner loads NIXL, which must not share a process with OR-Tools (above).
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _STALE_PROBE], capture_output=True,
                         text=True, timeout=60, check=True, cwd=Path(__file__).parents[2])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heard"] == [["sent", "c-now", [2]], ["sent", "c-unsaid", [3]],
                               ["failed", "now"]], result
    assert result["dropped"] == 3 and result["outcomes"] == {"ok": 2, "aborted": 1}, result



_POLL_PROBE = """
import json, time
from types import SimpleNamespace
from sidecar.runner import Sidecar

def interval(since_s, posting=0, waiters=0):
    state = SimpleNamespace(_active_at=time.monotonic() - since_s, _posting=posting,
                            _notif_waiters=waiters)
    return Sidecar._poll_interval(state)

print(json.dumps([interval(0.0), interval(0.0, posting=1), interval(0.5),
                  interval(60.0, waiters=1), interval(60.0)]))
"""


def test_progress_polls_hot_only_while_notifications_are_expected() -> None:
    # sidecar.runner loads NIXL: in a child process, as above.
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _POLL_PROBE], capture_output=True,
                         text=True, timeout=60, check=True, cwd=Path(__file__).parents[2])
    hot, posting, warm, waiting, quiet = json.loads(out.stdout.strip().splitlines()[-1])
    assert hot == 0.0002       # a notify: nixl job or notification just now
    assert posting == 0.005    # its own checks drive progress meanwhile
    assert warm == 0.005       # within a second of notification activity
    assert waiting == 0.005    # a WRITE target waits for its notification
    assert quiet == 0.02       # READs told through the scheduler, or nothing


_LOOPBACK_PROBE = """
import json, threading, time
import numpy as np
from scheduler.transfer.build import build_plan, encode_metadata
from scheduler.transfer.hints import hints_for_tier
from scheduler.transfer.plan import WorkerRegistration
from sidecar.nixl_adapter import NixlAdapter
from sidecar.pool import KvPool
from topology.tiers import Tier

def side(name):
    pool = KvPool(num_blocks=4, block_bytes=1 << 16)
    adapter = NixlAdapter(name)
    adapter.register(pool.registration(), pool.layout(), pool.mem_type, 0)
    return pool, adapter, WorkerRegistration(
        name=name, agent_name=name, agent_metadata_b64=encode_metadata(adapter.metadata()),
        mem_type="DRAM", layout=pool.layout())

src_pool, src, src_reg = side("prefill-0")
dst_pool, dst, dst_reg = side("decode-0")
data = (np.arange(1 << 16) % 251).astype(np.uint8)
src_pool.write(0, 1, data)
def read(plan_id, block):
    return build_plan(plan_id=plan_id, src=src_reg, dst=dst_reg, src_blocks=[1],
                      dst_blocks=[block], hints=hints_for_tier(Tier.SAME_LEAF, "DRAM"),
                      notify="scheduler")
def progress():  # the source's progress (a sidecar's progress thread), for wire-up
    while True:
        src.poll_notifs()
        time.sleep(0.001)
threading.Thread(target=progress, daemon=True).start()
dst.execute(read("wire-up", 0), time.monotonic() + 30)  # the first one connects
posted = dst.post(read("p", 2), time.monotonic() + 30)
state, released = posted.state, posted.released
# another thread holds the agent (as the job thread does across the next transfer()):
held, done = threading.Event(), threading.Event()
def hold():
    with dst._lock:
        held.set()
        done.wait(30)
threading.Thread(target=hold, daemon=True).start()
held.wait(30)
finished = []
reporter = threading.Thread(target=lambda: finished.append(dst.finish(posted).nbytes))
reporter.start()
reporter.join(5)
finished = list(finished)  # what it did while the agent was held
done.set()
moved = bool(np.array_equal(dst_pool.read(0, 2), data))
print(json.dumps({"state": state, "released": released, "finished": finished,
                  "moved": moved, "leaked": dst.close().leaked_handles}))
"""


def test_a_loopback_read_is_released_when_posted_so_its_report_needs_no_agent_call() -> None:
    # On loopback NIXL's transfer() does the copy and returns DONE: the handle is
    # released under that same lock hold, so the thread that reports the transfer
    # does not wait for the agent the job thread holds across the next copy.
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _LOOPBACK_PROBE], capture_output=True,
                         text=True, timeout=60, check=True, cwd=Path(__file__).parents[2])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"state": "DONE", "released": True, "finished": [1 << 16],
                      "moved": True, "leaked": 0}, result
