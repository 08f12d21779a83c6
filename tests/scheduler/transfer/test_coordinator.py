"""The control plane over the memory store: leases, jobs, reports, failure handling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import pydantic
import pytest

from scheduler.state.memory import MemoryStore
from scheduler.state.reservations import StoreUnavailableError
from scheduler.transfer.coordinator import TransferCoordinator, TransferRequest
from scheduler.transfer.plan import TransferJob, TransferRecord, TransferReport
from tests.scheduler.transfer.builders import registration
from topology.errors import ConflictError, NotFoundError, UnschedulableError, ValidationError

T = TypeVar("T")


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


def setup(mode: str = "READ", ttl: float = 10.0) -> tuple[TransferCoordinator, FakeClock]:
    clock = FakeClock()
    ids = iter(f"x{i}" for i in range(100))
    coordinator = TransferCoordinator(MemoryStore(clock), mode=mode,  # type: ignore[arg-type]
                                      lease_ttl_s=ttl, clock=clock, new_id=lambda: next(ids))
    return coordinator, clock


async def _two(c: TransferCoordinator, blocks: int = 16) -> None:
    await c.register(registration("prefill-0", num_blocks=blocks))
    await c.register(registration("decode-0", num_blocks=blocks, base=0x10_0000_0000))


def _report(plan_id: str, worker: str, outcome: str = "ok", role: str = "initiator"
            ) -> TransferReport:
    return TransferReport(plan_id=plan_id, worker=worker, role=role,
                          outcome=outcome)


def test_register_gives_growing_epochs_and_heartbeat_extends_the_lease() -> None:
    async def body() -> None:
        c, clock = setup(ttl=5)
        first = await c.register(registration("w"))
        second = await c.register(registration("w"))
        assert (first.epoch, second.epoch) == (1, 2)
        clock.now += 4
        lease = await c.store.heartbeat("w")
        assert lease.expires_at == clock.now + 5
        clock.now += 6
        with pytest.raises(NotFoundError, match="unknown worker 'w'"):
            await c.store.heartbeat("w")
        assert await c.expire() == ["w"]
    run(body())


def test_submit_queues_execute_for_the_initiator_and_nothing_for_a_passive_target() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        record = await c.submit(TransferRequest(src="prefill-0", dst="decode-0",
                                                src_blocks=(3, 4, 5)))
        assert record.plan.plan_id == "x0" and record.plan.dst_blocks == (0, 1, 2)
        dec = await c.store.wait_jobs("decode-0", 0)
        pre = await c.store.wait_jobs("prefill-0", 0)
        assert [j.kind for j in dec] == ["execute"] and pre == []
        assert (await c.store.get_worker("decode-0")).free_blocks == 13
    run(body())


@pytest.mark.parametrize(("mode", "notify", "target"), [
    ("WRITE", "nixl", "decode-0"), ("WRITE", "scheduler", "decode-0"),
    ("READ", "nixl", "prefill-0")])
def test_a_target_with_something_to_wait_for_gets_await(mode: str, notify: str,
                                                        target: str) -> None:
    async def body() -> None:
        c, _ = setup(mode=mode)
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,),
                                       notify=notify))  # type: ignore[arg-type]
        jobs = await c.store.wait_jobs(target, 0)
        assert [(j.kind, j.plan is not None) for j in jobs] == [("await", True)]
    run(body())


def test_long_poll_wakes_on_a_job_and_times_out_empty() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        assert await c.store.wait_jobs("decode-0", 0.05) == []
        waiter = asyncio.create_task(c.store.wait_jobs("decode-0", 5))
        await asyncio.sleep(0.01)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,)))
        jobs = await asyncio.wait_for(waiter, 1)
        assert [j.kind for j in jobs] == ["execute"]
    run(body())


def test_done_when_the_destination_reports_ok() -> None:
    async def body() -> None:
        c, _ = setup(mode="WRITE")
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0, 1)))
        after_src = await c.report("x0", _report("x0", "prefill-0"))
        assert after_src.state == "pending"
        after_dst = await c.report("x0", _report("x0", "decode-0", role="target"))
        assert after_dst.state == "done" and not after_dst.recompute
    run(body())


def test_a_failed_report_fails_the_transfer_and_aborts_the_other_side() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0, 1)))
        await c.store.wait_jobs("prefill-0", 0)
        record = await c.report("x0", _report("x0", "decode-0", "failed"))
        assert record.state == "failed" and record.recompute
        jobs = await c.store.wait_jobs("prefill-0", 0)
        assert [(j.kind, j.plan_id) for j in jobs] == [("abort", "x0")]
        # The passive target never saw the plan: its abort carries it (engine hook).
        assert jobs[0].plan == record.plan and jobs[0].reason
        assert await c.store.wait_jobs("decode-0", 0) == [
            TransferJob(kind="execute", plan_id="x0", plan=record.plan)]  # no abort back
    run(body())


def test_complete_and_abort_carry_the_epoch_of_the_side_they_are_for() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        await c.register(registration("prefill-0", num_blocks=16))  # epoch 2
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,)))
        await c.report("x0", _report("x0", "decode-0"))
        assert [(j.kind, j.epoch) for j in await c.store.wait_jobs("prefill-0", 0)] == [
            ("complete", 2)]
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(1,)))
        await c.report("x1", _report("x1", "decode-0", "failed"))
        assert [(j.kind, j.epoch) for j in await c.store.wait_jobs("prefill-0", 0)] == [
            ("abort", 2)]
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(2,)))
        await c.store.wait_jobs("decode-0", 0)
        await c.deregister("prefill-0")  # fails it: the decode side is told, at its epoch
        assert [(j.kind, j.epoch) for j in await c.store.wait_jobs("decode-0", 0)] == [
            ("abort", 1)]
    run(body())


def test_a_draining_worker_gets_no_new_plan_and_its_pending_one_ends() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        pending = await c.submit(TransferRequest(src="prefill-0", dst="decode-0",
                                                 src_blocks=(0,)))
        assert (await c.drain("prefill-0")).draining
        free = {n: (await c.store.get_worker(n)).free_blocks for n in ("prefill-0", "decode-0")}
        for src, dst in (("prefill-0", "decode-0"), ("decode-0", "prefill-0")):
            with pytest.raises(ConflictError, match="'prefill-0' is draining"):
                await c.submit(TransferRequest(src=src, dst=dst, src_blocks=(5,)))
            with pytest.raises(ConflictError, match="'prefill-0' is draining"):
                await c.submit_routed(src, dst, 2)
        # Nothing was taken, nothing stored.
        assert {n: (await c.store.get_worker(n)).free_blocks
                for n in ("prefill-0", "decode-0")} == free
        assert [r.plan.plan_id for r in await c.store.transfers_of("prefill-0")] == [
            pending.plan.plan_id]
        assert (await c.report("x0", _report("x0", "decode-0"))).state == "done"
        with pytest.raises(NotFoundError):
            await c.drain("nobody")
    run(body())


def test_an_expired_read_tells_its_passive_target_only() -> None:
    async def body() -> None:
        c, clock = setup(ttl=100)
        await _two(c)
        record = await c.submit(TransferRequest(src="prefill-0", dst="decode-0",
                                                src_blocks=(0,), deadline_s=2))
        await c.store.wait_jobs("decode-0", 0)
        clock.now += 2 + c.expiry_grace_s + 0.1
        await c.expire()
        assert (await c.store.get_transfer("x0")).state == "expired"
        jobs = await c.store.wait_jobs("prefill-0", 0)
        assert [(j.kind, j.plan) for j in jobs] == [("abort", record.plan)]
        assert await c.store.wait_jobs("decode-0", 0) == []
        await c.expire()  # ended once: nothing more for anyone
        assert await c.store.wait_jobs("prefill-0", 0) == []
    run(body())


def test_an_expired_write_tells_nobody() -> None:
    async def body() -> None:
        c, clock = setup(mode="WRITE", ttl=100)
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,),
                                       deadline_s=2))
        for name in ("prefill-0", "decode-0"):
            await c.store.wait_jobs(name, 0)
        clock.now += 2 + c.expiry_grace_s + 0.1
        await c.expire()
        assert (await c.store.get_transfer("x0")).state == "expired"
        for name in ("prefill-0", "decode-0"):
            assert await c.store.wait_jobs(name, 0) == []
    run(body())


def test_an_expired_lease_fails_pending_transfers() -> None:
    async def body() -> None:
        c, clock = setup(ttl=5)
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,)))
        clock.now += 3
        await c.store.heartbeat("decode-0")
        clock.now += 3
        assert await c.expire() == ["prefill-0"]
        record = await c.store.get_transfer("x0")
        assert record.state == "failed" and record.recompute
        assert "lease of prefill-0 expired" in (record.error or "")
        kinds = [j.kind for j in await c.store.wait_jobs("decode-0", 0)]
        assert kinds == ["execute", "abort"]
    run(body())


def test_deregistering_fails_pending_transfers() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,)))
        await c.deregister("decode-0")
        assert (await c.store.get_transfer("x0")).state == "failed"
        with pytest.raises(NotFoundError):
            await c.deregister("decode-0")
    run(body())


def test_unknown_worker_duplicate_id_and_full_pool() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c, blocks=4)
        with pytest.raises(NotFoundError, match="unknown worker 'ghost'"):
            await c.submit(TransferRequest(src="ghost", dst="decode-0", src_blocks=(0,)))
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,),
                                       plan_id="p"))
        with pytest.raises(ConflictError):
            await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,),
                                           plan_id="p"))
        with pytest.raises(UnschedulableError, match="3 free KV blocks, 4 needed"):
            await c.submit(TransferRequest(src="prefill-0", dst="decode-0",
                                           src_blocks=(0, 1, 2, 3)))
    run(body())


def test_invalid_blocks_give_allocated_blocks_back() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        with pytest.raises(ValidationError, match="out of range"):
            await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0, 99)))
        assert (await c.store.get_worker("decode-0")).free_blocks == 16
    run(body())


def test_report_from_a_stranger_is_rejected() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,)))
        with pytest.raises(ValidationError, match="not a side"):
            await c.report("x0", _report("x0", "someone-else"))
        with pytest.raises(NotFoundError):
            await c.report("nope", _report("nope", "decode-0"))
    run(body())


def test_failed_destination_blocks_are_quarantined_until_the_plan_expires() -> None:
    async def body() -> None:
        c, clock = setup(ttl=1000)
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0, 1),
                                       deadline_s=5))
        await c.report("x0", _report("x0", "decode-0", "timeout"))
        clock.now += 5.5            # a hung writer could still post until 5 s (+1 s slack)
        await c.expire()
        assert (await c.store.get_worker("decode-0")).free_blocks == 14
        clock.now += 1.0
        await c.expire()
        assert (await c.store.get_worker("decode-0")).free_blocks == 16
    run(body())


def test_plans_and_records_carry_wall_clock_times() -> None:
    async def body() -> None:
        c = TransferCoordinator(MemoryStore())  # the defaults: wall time everywhere
        await _two(c)
        record = await c.submit(TransferRequest(src="prefill-0", dst="decode-0",
                                                src_blocks=(0,), deadline_s=3))
        # Replicas on other hosts and telemetry (drift ages samples by wall time) read
        # these: a monotonic stamp would be meaningless there.
        assert abs(record.plan.not_after - (time.time() + 3)) < 1
        assert abs(record.created_at - time.time()) < 1
        done = await c.report(record.plan.plan_id, _report(record.plan.plan_id, "decode-0"))
        assert done.finished_at is not None and abs(done.finished_at - time.time()) < 1
    run(body())


def test_read_completion_reaches_the_target_through_the_scheduler() -> None:
    async def body() -> None:
        c, _ = setup(mode="READ")
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(4, 2)))
        assert await c.store.wait_jobs("prefill-0", 0) == []
        record = await c.report("x0", _report("x0", "decode-0"))
        assert record.state == "done" and len(record.reports) == 1
        jobs = await c.store.wait_jobs("prefill-0", 0)
        # The passive target gets the blocks the transfer read, no plan.
        assert [(j.kind, j.plan_id, j.blocks, j.plan, j.epoch) for j in jobs] == [
            ("complete", "x0", (4, 2), None, 1)]
        await c.report("x0", _report("x0", "decode-0"))  # a repeated report: no second one
        assert await c.store.wait_jobs("prefill-0", 0) == []
    run(body())


def test_write_told_through_the_scheduler_completes_its_waiting_target() -> None:
    async def body() -> None:
        c, _ = setup(mode="WRITE")
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,),
                                       notify="scheduler"))
        assert [j.kind for j in await c.store.wait_jobs("decode-0", 0)] == ["await"]
        record = await c.report("x0", _report("x0", "prefill-0"))
        assert record.state == "pending"  # done at the destination's own report
        jobs = await c.store.wait_jobs("decode-0", 0)
        assert [(j.kind, j.blocks) for j in jobs] == [("complete", None)]
        done = await c.report("x0", _report("x0", "decode-0", role="target"))
        assert done.state == "done"
    run(body())


def test_wait_transfer_answers_on_change_or_timeout() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(0,)))
        record, version = await c.store.wait_transfer("x0", 0.01, 1)
        assert record.state == "pending" and version == 1
        waiter = asyncio.create_task(c.store.wait_transfer("x0", 5, version))
        await asyncio.sleep(0.01)
        await c.report("x0", _report("x0", "decode-0"))
        record, version = await asyncio.wait_for(waiter, 1)
        assert record.state == "done" and version == 2
    run(body())


def test_memory_store_forgets_old_finished_records() -> None:
    async def body() -> None:
        clock = FakeClock()
        store = MemoryStore(clock, max_transfers=20)
        c = TransferCoordinator(store, clock=clock)
        await _two(c, blocks=64)
        for i in range(30):
            await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(i,),
                                           dst_blocks=(i,), plan_id=f"p{i}"))
            await c.report(f"p{i}", _report(f"p{i}", "decode-0"))
        with pytest.raises(NotFoundError):
            await store.get_transfer("p0")
        assert (await store.get_transfer("p29")).state == "done"
    run(body())


def test_a_routed_transfer_takes_blocks_on_both_sides_in_one_step() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        await c.store.allocate_blocks("prefill-0", 2)
        record = await c.submit_routed("prefill-0", "decode-0", 3, block_hashes=(7, 8, 9))
        plan = record.plan
        assert (plan.plan_id, plan.src_blocks, plan.dst_blocks) == ("x0", (2, 3, 4), (0, 1, 2))
        assert plan.block_hashes == (7, 8, 9)
        assert (await c.store.get_worker("prefill-0")).free_blocks == 11
        assert (await c.store.get_worker("decode-0")).free_blocks == 13
        assert [j.kind for j in await c.store.wait_jobs("decode-0", 0)] == ["execute"]
        assert await c.store.wait_jobs("prefill-0", 0) == []  # a passive target
        await c.store.allocate_blocks("decode-0", 5)
        with pytest.raises(UnschedulableError, match="decode-0 has 8 free KV blocks, 9 needed"):
            await c.submit_routed("prefill-0", "decode-0", 9)
        assert (await c.store.get_worker("prefill-0")).free_blocks == 11  # nothing taken
        with pytest.raises(ValidationError, match="blocks"):
            await c.submit_routed("prefill-0", "decode-0", 0)
    run(body())


def test_a_routed_transfer_that_cannot_start_gives_both_sides_blocks_back() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        with pytest.raises(ValidationError, match="block_hashes"):
            await c.submit_routed("prefill-0", "decode-0", 2, block_hashes=(1, 2, 3))
        for name in ("prefill-0", "decode-0"):
            assert (await c.store.get_worker(name)).free_blocks == 16
    run(body())


def test_a_plan_id_taken_meanwhile_gives_the_blocks_back() -> None:
    async def body() -> None:
        clock = FakeClock()
        # Generated ids are not looked up first: the store refuses the second one.
        c = TransferCoordinator(MemoryStore(clock), clock=clock, new_id=lambda: "same")
        await _two(c)
        await c.submit_routed("prefill-0", "decode-0", 2)
        with pytest.raises(ConflictError, match="same"):
            await c.submit_routed("prefill-0", "decode-0", 2)
        with pytest.raises(ConflictError, match="same"):
            await c.submit(TransferRequest(src="prefill-0", dst="decode-0", src_blocks=(9,)))
        assert (await c.store.get_worker("prefill-0")).free_blocks == 14
        assert (await c.store.get_worker("decode-0")).free_blocks == 14
        assert len(await c.store.wait_jobs("decode-0", 0)) == 1
    run(body())


def test_explicit_destination_blocks_are_claimed() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        record = await c.submit(TransferRequest(src="prefill-0", dst="decode-0",
                                                src_blocks=(0, 1), dst_blocks=(5, 9)))
        assert record.plan.dst_blocks == (5, 9)
        assert await c.store.allocate_blocks("decode-0", 6) == [0, 1, 2, 3, 4, 6]
    run(body())


def test_a_routed_transfer_with_a_bad_request_gives_the_blocks_back() -> None:
    async def body() -> None:
        c, _ = setup()
        await _two(c)
        with pytest.raises(pydantic.ValidationError):
            await c.submit_routed("prefill-0", "decode-0", 1,
                                  block_hashes=("not a hash",))  # type: ignore[arg-type]
        for name in ("prefill-0", "decode-0"):
            assert (await c.store.get_worker(name)).free_blocks == 16
    run(body())


class _AnswerLost(MemoryStore):
    """Stores the transfer, then fails as a timed-out Redis call whose command ran."""

    async def start_transfer(self, record: TransferRecord,
                             jobs: Sequence[tuple[str, TransferJob]]) -> None:
        await super().start_transfer(record, jobs)
        raise StoreUnavailableError("start_transfer", "timed out")


def test_a_transfer_whose_store_outcome_is_unknown_keeps_its_blocks() -> None:
    async def body() -> None:
        clock = FakeClock()
        c = TransferCoordinator(_AnswerLost(clock), clock=clock)
        await _two(c)
        with pytest.raises(StoreUnavailableError):
            await c.submit_routed("prefill-0", "decode-0", 2)
        # The jobs were queued and use the blocks: handing them out again would let two
        # transfers write the same KV blocks.
        assert len(await c.store.wait_jobs("decode-0", 0)) == 1
        for name in ("prefill-0", "decode-0"):
            assert (await c.store.get_worker(name)).free_blocks == 14
    run(body())


def test_an_execute_jobs_plan_id_is_read_off_its_head_and_other_jobs_are_skipped() -> None:
    from scheduler.transfer.coordinator import _execute_plan_id

    job = TransferJob(kind="execute", plan_id='a"b\\c', plan=None).model_dump_json()
    assert _execute_plan_id(job) == 'a"b\\c'
    assert _execute_plan_id(TransferJob(kind="complete", plan_id="x").model_dump_json()) \
        is None
    # text in another order (not the stores' own) is parsed whole
    assert _execute_plan_id('{"plan_id": "z", "kind": "execute"}') == "z"
    assert _execute_plan_id('{"plan_id": "z", "kind": "abort"}') is None
