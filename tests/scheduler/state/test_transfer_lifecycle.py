"""Every transfer ends once — done, failed or expired — and gives its blocks back, on
every store (the coordinator over memory and over a real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

from scheduler.transfer.coordinator import EXPIRY_GRACE_S, TransferCoordinator
from scheduler.transfer.plan import TransferRecord, TransferReport
from tests.scheduler.state.harness import Backend, FakeClock
from tests.scheduler.transfer.builders import registration

BLOCKS = 16


class Ends:
    """An end listener that remembers what it was told."""

    def __init__(self) -> None:
        self.records: list[TransferRecord] = []

    async def __call__(self, record: TransferRecord) -> None:
        self.records.append(record)


def coordinator(store: Any, clock: FakeClock, ends: Ends) -> TransferCoordinator:
    c = TransferCoordinator(store, clock=clock, lease_ttl_s=1000.0, deadline_s=2.0)
    c.listeners.append(ends)
    return c


async def two_workers(c: TransferCoordinator) -> None:
    await c.register(registration("prefill-0", num_blocks=BLOCKS))
    await c.register(registration("decode-0", num_blocks=BLOCKS, base=0x10_0000_0000))


async def free(c: TransferCoordinator) -> tuple[int, int]:
    return ((await c.store.get_worker("prefill-0")).free_blocks,
            (await c.store.get_worker("decode-0")).free_blocks)


def report(plan_id: str, worker: str, outcome: str = "ok") -> TransferReport:
    return TransferReport(plan_id=plan_id, worker=worker, outcome=outcome,  # type: ignore[arg-type]
                          role="initiator" if worker == "decode-0" else "target")


def test_a_transfer_nobody_reports_expires_and_gives_every_block_back(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        ends = Ends()
        c = coordinator(store, clock, ends)
        await two_workers(c)
        plan_ids = [(await c.submit_routed("prefill-0", "decode-0", 4)).plan.plan_id
                    for _ in range(3)]
        assert await free(c) == (BLOCKS - 12, BLOCKS - 12)
        clock.advance(2.0 + EXPIRY_GRACE_S - 0.1)  # past not_after, within the grace
        await c.expire()
        assert ends.records == []
        clock.advance(0.2)
        await c.expire()
        records = [await store.get_transfer(p) for p in plan_ids]
        assert [(r.state, r.recompute) for r in records] == [("expired", True)] * 3
        assert sorted(r.plan.plan_id for r in ends.records) == sorted(plan_ids)  # once each
        # source blocks at once; destination blocks after their quarantine (not_after
        # plus slack, due by now), applied by the next sweep
        await c.expire()
        assert await free(c) == (BLOCKS, BLOCKS)
        await c.expire()
        assert len(ends.records) == 3
    backend.run(body)


def test_a_failed_routed_transfer_gives_both_sides_blocks_back(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        ends = Ends()
        c = coordinator(store, clock, ends)
        await two_workers(c)
        record = await c.submit_routed("prefill-0", "decode-0", 4)
        failed = await c.report(record.plan.plan_id, report(record.plan.plan_id, "decode-0",
                                                            "failed"))
        assert failed.state == "failed"
        assert await free(c) == (BLOCKS, BLOCKS - 4), "source back now, destination held"
        clock.advance(2.0 + 1.0)  # the destination's quarantine: a late writer is done
        await c.expire()
        assert await free(c) == (BLOCKS, BLOCKS)
        assert [r.state for r in ends.records] == ["failed"]
    backend.run(body)


def test_a_done_transfer_gives_source_blocks_back_and_destination_blocks_on_release(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        ends = Ends()
        c = coordinator(store, clock, ends)
        await two_workers(c)
        plan_id = (await c.submit_routed("prefill-0", "decode-0", 4)).plan.plan_id
        await c.report(plan_id, report(plan_id, "decode-0"))
        await c.report(plan_id, report(plan_id, "prefill-0"))
        assert await free(c) == (BLOCKS, BLOCKS - 4), "the decode request holds its KV"
        clock.advance(60.0)
        await c.expire()
        assert await free(c) == (BLOCKS, BLOCKS - 4)
        assert await c.release(plan_id, "decode-0") is True  # its request ended
        assert await c.release(plan_id, "decode-0") is False
        assert await free(c) == (BLOCKS, BLOCKS)
        assert [r.state for r in ends.records] == ["done"]
        other = (await c.submit_routed("prefill-0", "decode-0", 2)).plan.plan_id
        await c.report(other, report(other, "decode-0"))
        await c.register(registration("decode-0", num_blocks=BLOCKS, base=0x10_0000_0000))
        taken = await store.allocate_blocks("decode-0", 2)
        assert await c.release(other, "decode-0") is False, "an earlier registration's"
        assert (await store.get_worker("decode-0")).free_blocks == BLOCKS - len(taken)
    backend.run(body)


def test_reports_and_sweeps_racing_on_two_replicas_end_each_transfer_once(
        backend: Backend) -> None:
    async def body(a: Any, b: Any, clock: FakeClock) -> None:
        ends = Ends()
        one, two = coordinator(a, clock, ends), coordinator(b, clock, ends)
        await two_workers(one)
        plan_ids = [(await one.submit_routed("prefill-0", "decode-0", 1)).plan.plan_id
                    for _ in range(6)]
        clock.advance(2.0 + EXPIRY_GRACE_S + 0.1)
        await asyncio.gather(*(step for p in plan_ids for step in (
            one.report(p, report(p, "decode-0")), two.report(p, report(p, "prefill-0", "failed")),
            one.expire(), two.expire())))
        assert sorted(r.plan.plan_id for r in ends.records) == sorted(plan_ids)
        for record in ends.records:
            stored = await a.get_transfer(record.plan.plan_id)
            assert stored.state == record.state != "pending"
            assert len(stored.reports) == 2, "no report was lost"
    backend.run(body, replicas=2)
