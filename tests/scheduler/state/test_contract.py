"""One contract suite, run against every state store (memory and a real Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scheduler.state.base import WorkerDrainingError, WorkerRegisteredAgainError
from scheduler.state.redis_store import RedisStore
from scheduler.state.reservations import FIRST_EVENT_ID, LoadItem, MemoryLoads
from scheduler.transfer.plan import TransferJob, TransferRecord
from tests.scheduler.state.harness import Backend, FakeClock
from tests.scheduler.transfer.builders import plan, registration
from topology.errors import ConflictError, NotFoundError, UnschedulableError, ValidationError


def job(plan_id: str = "req-1", *, kind: str = "abort", reason: str | None = "test") -> TransferJob:
    """A small job (``abort`` needs no plan)."""
    return TransferJob.model_validate({"kind": kind, "plan_id": plan_id, "reason": reason})


def record(plan_id: str = "req-1", *, state: str = "pending", created_at: float = 1.0,
           not_after: float = 2_000.0) -> TransferRecord:
    """A transfer record between prefill-0 and decode-0."""
    return TransferRecord.model_validate({"plan": plan(plan_id=plan_id, not_after=not_after),
                                          "state": state, "created_at": created_at})


# -- workers and leases -------------------------------------------------------------


def test_registration_gives_growing_epochs_a_fresh_lease_and_every_block_free(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        first = await store.register_worker(registration("w0", num_blocks=8), 10.0)
        assert (first.epoch, first.ttl_s, first.expires_at) == (1, 10.0, clock.now + 10.0)
        await store.allocate_blocks("w0", 5)
        again = await store.register_worker(registration("w0", num_blocks=8), 10.0)
        entry = await store.get_worker("w0")
        assert again.epoch == 2
        assert entry.lease == again
        assert entry.free_blocks == 8
        assert entry.registration == registration("w0", num_blocks=8)
    backend.run(body)


def test_a_draining_worker_is_refused_for_blocks_until_it_registers_again(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0", num_blocks=8), 10.0)
        await store.register_worker(registration("w1", num_blocks=8), 10.0)
        assert [e.draining for e in await store.list_workers()] == [False, False]
        taken = await store.allocate_blocks("w0", 2)  # a pending transfer's blocks
        entry = await store.drain_worker("w0")
        assert (entry.draining, entry.lease.epoch, entry.free_blocks) == (True, 1, 6)
        assert (await store.drain_worker("w0")).draining  # idempotent
        for counts in ({"w1": 2, "w0": 0}, {"w0": 1}, {"w1": 0, "w0": 0}):
            with pytest.raises(WorkerDrainingError) as caught:
                await store.take_blocks(counts)
            assert caught.value.worker == "w0" and "'w0' is draining" in str(caught.value)
        with pytest.raises(ConflictError):  # a 409 at the API
            await store.allocate_blocks("w0", 1)
        # All or nothing: w1's blocks were not taken.
        assert (await store.get_worker("w1")).free_blocks == 8
        # Heartbeats keep the mark; the listing and get_worker show it.
        clock.advance(5.0)
        await store.heartbeat("w0")
        assert (await store.get_worker("w0")).draining
        assert {e.registration.name: e.draining for e in await store.list_workers()} == {
            "w0": True, "w1": False}
        # What it holds still goes back (its pending transfers end as usual).
        assert await store.release_blocks("w0", taken, epoch=1)
        assert (await store.get_worker("w0")).free_blocks == 8
        # A new registration clears it.
        await store.register_worker(registration("w0", num_blocks=8), 10.0)
        assert not (await store.get_worker("w0")).draining
        assert (await store.take_blocks({"w0": 1}))["w0"].blocks == (0,)
        assert {e.registration.name: e.draining for e in await store.list_workers()} == {
            "w0": False, "w1": False}
        with pytest.raises(NotFoundError):
            await store.drain_worker("nobody")
        clock.advance(20.0)  # both leases lapsed
        with pytest.raises(NotFoundError):
            await store.drain_worker("w1")
    backend.run(body)


def test_heartbeat_extends_a_live_lease_and_refuses_an_expired_one(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0"), 10.0)
        clock.advance(7.5)
        lease = await store.heartbeat("w0")
        assert lease.expires_at == clock.now + 10.0
        assert lease.epoch == 1
        clock.advance(10.0)
        with pytest.raises(NotFoundError):
            await store.heartbeat("w0")
        with pytest.raises(NotFoundError):
            await store.heartbeat("nobody")
    backend.run(body)


def test_expired_workers_vanish_at_once_and_expire_reports_them_once(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("short"), 5.0)
        await store.register_worker(registration("long"), 50.0)
        clock.advance(5.0)
        assert [e.registration.name for e in await store.list_workers()] == ["long"]
        with pytest.raises(NotFoundError):
            await store.get_worker("short")
        assert await store.expire() == ["short"]
        assert await store.expire() == []
        assert await store.remove_worker("short") is False
    backend.run(body)


def test_list_workers_is_sorted_by_name(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        for name in ("decode-1", "prefill-0", "decode-0"):
            await store.register_worker(registration(name), 10.0)
        names = [e.registration.name for e in await store.list_workers()]
        assert names == ["decode-0", "decode-1", "prefill-0"]
    backend.run(body)


# -- blocks -------------------------------------------------------------------------


def test_allocation_takes_the_lowest_free_blocks_and_never_oversubscribes(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0", num_blocks=10), 10.0)
        assert await store.allocate_blocks("w0", 3) == [0, 1, 2]
        await store.claim_blocks("w0", [3, 5, 99])
        assert await store.allocate_blocks("w0", 2) == [4, 6]
        with pytest.raises(UnschedulableError, match="3 free KV blocks, 4 needed"):
            await store.allocate_blocks("w0", 4)
        assert (await store.get_worker("w0")).free_blocks == 3
        await store.release_blocks("w0", [1, 5, -1, 10])
        assert await store.allocate_blocks("w0", 5) == [1, 5, 7, 8, 9]
        assert (await store.get_worker("w0")).free_blocks == 0
    backend.run(body)


def test_taking_blocks_of_several_workers_is_all_or_nothing(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("a", num_blocks=4), 10.0)
        lease = await store.register_worker(registration("b", num_blocks=6), 10.0)
        await store.allocate_blocks("b", 1)
        grants = await store.take_blocks({"a": 0, "b": 3})
        assert grants["a"].blocks == () and grants["b"].blocks == (1, 2, 3)
        assert grants["b"].entry == await store.get_worker("b")
        assert (grants["b"].entry.lease, grants["b"].entry.free_blocks) == (lease, 2)
        assert grants["a"].entry.registration == registration("a", num_blocks=4)
        with pytest.raises(UnschedulableError, match="b has 2 free KV blocks, 3 needed"):
            await store.take_blocks({"a": 2, "b": 3})
        with pytest.raises(NotFoundError, match="ghost"):
            await store.take_blocks({"a": 2, "ghost": 1})
        assert (await store.get_worker("a")).free_blocks == 4  # nothing was taken
        await store.release_blocks("b", [2])
        grants = await store.take_blocks({"b": 2, "a": 4})
        assert (grants["b"].blocks, grants["a"].blocks) == ((2, 4), (0, 1, 2, 3))
        assert grants["a"].entry.free_blocks == 0
    backend.run(body)


def test_blocks_of_unknown_or_expired_workers(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        with pytest.raises(NotFoundError):
            await store.allocate_blocks("nobody", 1)
        await store.release_blocks("nobody", [1])
        await store.register_worker(registration("w0", num_blocks=4), 1.0)
        clock.advance(1.0)
        with pytest.raises(NotFoundError):
            await store.allocate_blocks("w0", 1)
        with pytest.raises(NotFoundError):
            await store.claim_blocks("w0", [0])
    backend.run(body)


def test_quarantined_blocks_return_only_when_the_clock_reaches_their_time(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0", num_blocks=4), 100.0)
        assert await store.allocate_blocks("w0", 4) == [0, 1, 2, 3]
        await store.release_blocks_at("w0", [1, 2], clock.now + 30.0)
        clock.advance(29.0)
        await store.expire()
        assert (await store.get_worker("w0")).free_blocks == 0
        clock.advance(1.0)
        await store.expire()
        await store.expire()
        assert await store.allocate_blocks("w0", 2) == [1, 2]
    backend.run(body)


def test_releases_meant_for_an_earlier_registration_are_ignored(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0", num_blocks=8), 100.0)
        await store.allocate_blocks("w0", 4)
        await store.release_blocks_at("w0", [0, 1], clock.now + 5.0, epoch=1)
        await store.register_worker(registration("w0", num_blocks=8), 100.0)  # epoch 2
        assert await store.allocate_blocks("w0", 2) == [0, 1]  # in use by epoch 2 now
        assert await store.release_blocks("w0", [0], epoch=1) is False
        clock.advance(6.0)
        await store.expire()
        assert (await store.get_worker("w0")).free_blocks == 6, "epoch 1's quarantine " \
            "must not free the blocks epoch 2 handed out"
        assert await store.release_blocks("w0", [0], epoch=2) is True
        assert await store.release_blocks("w0", [1]) is True  # no epoch: any
        assert (await store.get_worker("w0")).free_blocks == 8
        assert await store.release_blocks("ghost", [1]) is False
    backend.run(body)


# -- jobs ---------------------------------------------------------------------------


def test_jobs_come_out_in_order_once(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0"), 10.0)
        assert await store.wait_jobs("w0", 0) == []
        for i in range(3):
            await store.put_job("w0", job(f"p{i}"))
        assert [j.plan_id for j in await store.wait_jobs("w0", 0)] == ["p0", "p1", "p2"]
        assert await store.wait_jobs("w0", 0) == []
        with pytest.raises(NotFoundError):
            await store.put_job("nobody", job())
        with pytest.raises(NotFoundError):
            await store.wait_jobs("nobody", 0)
    backend.run(body)


def test_a_long_poll_wakes_on_a_job_and_times_out_empty(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0"), 10.0)
        poll = asyncio.create_task(store.wait_jobs("w0", 5.0))
        await asyncio.sleep(0.05)
        await store.put_job("w0", job("p1"))
        jobs = await asyncio.wait_for(poll, 2.0)
        assert [j.plan_id for j in jobs] == ["p1"]
        assert await store.wait_jobs("w0", 0.1) == []
    backend.run(body)


def test_removing_a_worker_drops_its_jobs_and_wakes_its_poll(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0"), 10.0)
        poll = asyncio.create_task(store.wait_jobs("w0", 5.0))
        await asyncio.sleep(0.05)
        assert await store.remove_worker("w0") is True
        assert await asyncio.wait_for(poll, 2.0) == []
        assert await store.remove_worker("w0") is False
        await store.register_worker(registration("w0"), 10.0)
        assert await store.wait_jobs("w0", 0) == []
    backend.run(body)


def test_registering_again_drops_queued_jobs(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0"), 10.0)
        await store.put_job("w0", job())
        await store.register_worker(registration("w0"), 10.0)
        assert await store.wait_jobs("w0", 0) == []
    backend.run(body)


# -- transfers ----------------------------------------------------------------------


def test_transfer_records_are_stored_replaced_and_listed_while_pending(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        with pytest.raises(NotFoundError):
            await store.get_transfer("req-1")
        first = record("req-1")
        await store.put_transfer(first)
        await store.put_transfer(record("req-2", created_at=2.0))
        assert await store.get_transfer("req-1") == first
        ids = {r.plan.plan_id for r in await store.transfers_of("decode-0")}
        assert ids == {"req-1", "req-2"}
        await store.put_transfer(record("req-1", state="done"))
        assert (await store.get_transfer("req-1")).state == "done"
        assert [r.plan.plan_id for r in await store.transfers_of("prefill-0")] == ["req-2"]
        assert await store.transfers_of("stranger") == []
    backend.run(body)


def test_starting_a_transfer_stores_it_and_queues_its_jobs_all_or_nothing(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("prefill-0"), 10.0)
        await store.register_worker(registration("decode-0"), 10.0)
        first = record("req-1")
        await store.start_transfer(first, [("decode-0", job("req-1", reason="x")),
                                           ("prefill-0", job("req-1", reason="y"))])
        assert await store.get_transfer("req-1") == first
        assert (await store.wait_transfer("req-1", 0, 0))[1] == 1
        assert [j.reason for j in await store.wait_jobs("decode-0", 0)] == ["x"]
        assert [j.reason for j in await store.wait_jobs("prefill-0", 0)] == ["y"]
        assert [r.plan.plan_id for r in await store.transfers_of("prefill-0")] == ["req-1"]
        with pytest.raises(ConflictError, match="req-1"):
            await store.start_transfer(record("req-1"), [("decode-0", job("req-1"))])
        assert await store.wait_jobs("decode-0", 0) == []
        with pytest.raises(NotFoundError, match="ghost"):
            await store.start_transfer(record("req-2"), [("decode-0", job("req-2")),
                                                         ("ghost", job("req-2"))])
        with pytest.raises(NotFoundError):
            await store.get_transfer("req-2")
        assert await store.wait_jobs("decode-0", 0) == []
    backend.run(body)


def test_a_transfer_is_not_stored_once_a_side_of_its_plan_changed_since_its_blocks_were_taken(
        backend: Backend) -> None:
    # Between take_blocks (which read both sides' epochs for the plan) and start_transfer
    # another call may remove a side, register it again or mark it draining. The READ's
    # source (prefill-0) gets no job: checking the jobs' workers alone would miss it.
    async def body(store: Any, clock: FakeClock) -> None:
        async def lapse(name: str) -> None:  # (prefill-0's lease: 10 s, decode-0's: 100 s)
            clock.now += 11.0

        async def again(name: str) -> None:
            await store.register_worker(registration(name), 10.0)

        cases = ((store.remove_worker, "prefill-0", NotFoundError, "unknown worker"),
                 (lapse, "prefill-0", NotFoundError, "unknown worker"),
                 (store.drain_worker, "prefill-0", WorkerDrainingError, "is draining"),
                 (again, "decode-0", WorkerRegisteredAgainError, "registered again"))
        for i, (change, name, error, says) in enumerate(cases):
            for side, ttl_s in (("prefill-0", 10.0), ("decode-0", 100.0)):
                await store.register_worker(registration(side), ttl_s)
            epochs = [(await store.get_worker(side)).lease.epoch
                      for side in ("prefill-0", "decode-0")]
            plan = record(f"req-{i}").plan
            planned = record(f"req-{i}").model_copy(update={"plan": plan.model_copy(update={
                "src": plan.src.model_copy(update={"epoch": epochs[0]}),
                "dst": plan.dst.model_copy(update={"epoch": epochs[1]})})})
            await change(name)
            with pytest.raises(error, match=f"{says}|{name}") as caught:
                await store.start_transfer(planned, [("decode-0", job(f"req-{i}"))])
            assert name in str(caught.value)
            with pytest.raises(NotFoundError):
                await store.get_transfer(f"req-{i}")
            if name == "prefill-0":
                assert await store.wait_jobs("decode-0", 0) == []
    backend.run(body)


def test_a_record_is_replaced_only_at_the_version_it_was_read_at(backend: Backend) -> None:
    async def body(a: Any, b: Any, clock: FakeClock) -> None:
        await a.put_transfer(record())
        got, version = await b.read_transfer("req-1")
        assert (got, version) == (record(), 1)
        assert await a.replace_transfer(record(state="done"), version) == 2
        assert await b.replace_transfer(record(state="failed"), version) is None  # too late
        assert await b.read_transfer("req-1") == (record(state="done"), 2)
        assert await b.transfers_of("decode-0") == []
        with pytest.raises(NotFoundError):
            await a.replace_transfer(record("nope"), 1)
        with pytest.raises(NotFoundError):
            await a.read_transfer("nope")
    backend.run(body, replicas=2)


def test_due_transfers_are_the_pending_ones_past_their_deadline(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("prefill-0"), 100.0)
        await store.register_worker(registration("decode-0"), 100.0)
        for plan_id, not_after in (("late", 30.0), ("early", 10.0), ("mid", 20.0)):
            await store.start_transfer(record(plan_id, not_after=not_after), [])
        assert await store.due_transfers(5.0) == []
        assert await store.due_transfers(20.0) == ["early", "mid"]
        assert await store.due_transfers(20.0) == ["early", "mid"], "due until they end"
        assert await store.due_transfers(99.0, limit=1) == ["early"]
        _, version = await store.read_transfer("early")
        await store.replace_transfer(record("early", state="expired", not_after=10.0), version)
        assert await store.due_transfers(99.0) == ["mid", "late"]
    backend.run(body)


def test_wait_transfer_returns_on_a_new_version_or_after_the_timeout(
        backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.put_transfer(record())
        same, version = await store.wait_transfer("req-1", 0.1, 1)
        assert (same.state, version) == ("pending", 1)
        waiter = asyncio.create_task(store.wait_transfer("req-1", 5.0, 1))
        await asyncio.sleep(0.05)
        await store.put_transfer(record(state="failed"))
        changed, version = await asyncio.wait_for(waiter, 2.0)
        assert (changed.state, version) == ("failed", 2)
        with pytest.raises(NotFoundError):
            await store.wait_transfer("nope", 0.1, 0)
    backend.run(body)


# -- load reservations --------------------------------------------------------------


def test_reservations_stay_within_capacity(backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        await loads.set_capacity("w0", 1000, 2)
        assert await loads.reserve("w0", 600) is True
        assert await loads.reserve("w0", 600) is False
        assert await loads.reserve("w0", 400) is True
        assert await loads.reserve("w0", 0) is False
        got = (await loads.loads())["w0"]
        assert (got.tokens, got.requests, got.max_tokens, got.max_requests) == (1000, 2, 1000, 2)
        await loads.release("w0", 5000, 5)
        assert (await loads.loads())["w0"].tokens == 0
        await loads.set_capacity("w0", 10, 1)
        await loads.release("nobody", 1)
        with pytest.raises(NotFoundError):
            await loads.reserve("nobody", 1)
        with pytest.raises(ValidationError):
            await loads.reserve("w0", -1)
        assert await loads.drop_load("w0") is True
        assert await loads.drop_load("w0") is False
        assert await loads.loads() == {}
    backend.run(body, loads=True)


def test_reserving_several_items_is_all_or_nothing(backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        await loads.set_capacity("a", 1000, 2)
        await loads.set_capacity("b", 1000, 1)
        assert await loads.reserve_all([("a", 300, 1), ("b", 0, 1)]) is None
        assert await loads.reserve_all([("a", 100, 1), ("b", 0, 1)]) == "b"
        assert await loads.reserve_all([("a", 400, 1), ("a", 400, 1)]) == "a"  # adds up
        assert await loads.reserve_all([]) is None
        got = await loads.loads()
        assert [(got[n].tokens, got[n].requests) for n in "ab"] == [(300, 1), (0, 1)]
        with pytest.raises(NotFoundError, match="nobody"):
            await loads.reserve_all([("a", 1, 0), ("nobody", 1, 0)])
        with pytest.raises(ValidationError):
            await loads.reserve_all([("a", 1, -1)])
        assert (await loads.loads())["a"].tokens == 300
    backend.run(body, loads=True)


def test_workers_and_loads_are_listed_together(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        loads = store if isinstance(store, RedisStore) else MemoryLoads()
        await store.register_worker(registration("w1"), 10.0)
        await store.register_worker(registration("w0", num_blocks=8), 10.0)
        await loads.set_capacity("w0", 100, 4)
        await loads.reserve("w0", 10)
        await store.allocate_blocks("w0", 2)
        workers, by_name = await store.list_with_loads(loads)
        assert workers == await store.list_workers() and by_name == await loads.loads()
        assert [e.registration.name for e in workers] == ["w0", "w1"]
        assert (workers[0].free_blocks, by_name["w0"].tokens) == (6, 10)
    backend.run(body)


def test_concurrent_reservations_from_two_replicas_never_oversubscribe(
        backend: Backend) -> None:
    async def body(a: Any, b: Any, clock: FakeClock) -> None:
        await a.set_capacity("w0", 10_000, 7)
        results = await asyncio.gather(*(store.reserve("w0", 100)
                                         for _ in range(20) for store in (a, b)))
        assert sum(results) == 7
        assert (await b.loads())["w0"].requests == 7
        assert (await a.loads())["w0"].tokens == 700
    backend.run(body, replicas=2, loads=True)


# -- reservations -------------------------------------------------------------------


def _items(*rows: tuple[str, int, int]) -> list[LoadItem]:
    return [LoadItem(worker=w, tokens=t, requests=r) for w, t, r in rows]


async def _usage(loads: Any) -> dict[str, tuple[int, int]]:
    return {name: (load.tokens, load.requests) for name, load in (await loads.loads()).items()}


def test_a_reservation_gives_back_exactly_what_it_holds_once(backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        await loads.set_capacity("p", 1000, 4)
        await loads.set_capacity("d", 1000, 1)
        held = _items(("p", 300, 1), ("d", 0, 1))
        assert await loads.open_reservation("r1", "replica-a", held, 60.0) is None
        assert await loads.open_reservation("r1", "replica-a", held, 60.0) is None  # a retry
        assert await _usage(loads) == {"p": (300, 1), "d": (0, 1)}
        assert await loads.open_reservation("r2", "replica-a", held, 60.0) == "d"  # full
        with pytest.raises(NotFoundError, match="r2"):
            await loads.get_reservation("r2")
        got = await loads.get_reservation("r1")
        assert (got.owner, list(got.items), got.expires_at) == ("replica-a", held,
                                                               clock.now + 60.0)
        assert await loads.close_reservation("r1", ["p"]) == held[:1]  # prefill done
        assert await _usage(loads) == {"p": (0, 0), "d": (0, 1)}
        assert list((await loads.get_reservation("r1")).items) == held[1:]
        assert await loads.close_reservation("r1") == held[1:]
        assert await loads.close_reservation("r1") == []  # closed: nothing given twice
        assert await _usage(loads) == {"p": (0, 0), "d": (0, 0)}
        with pytest.raises(NotFoundError, match="nobody"):
            await loads.open_reservation("r3", "x", _items(("nobody", 1, 1)), 60.0)
        with pytest.raises(NotFoundError):
            await loads.renew_reservation("r1", 10.0)
    backend.run(body, loads=True)


async def _promised(loads: Any) -> dict[str, int]:
    return {name: load.blocks for name, load in (await loads.loads()).items()}


async def _hold_prefill_and_decode(loads: Any, rids: tuple[str, ...],
                                   owner: str) -> list[LoadItem]:
    """Workers ``p`` and ``d``; one reservation per id of 300 prefill tokens on ``p``
    and a request with 20 promised blocks on ``d``. Returns the items held by each."""
    for worker in ("p", "d"):
        await loads.set_capacity(worker, 1000, 8)
    held = [LoadItem(worker="p", tokens=300, requests=1),
            LoadItem(worker="d", tokens=0, requests=1, blocks=20)]
    for rid in rids:
        assert await loads.open_reservation(rid, owner, held, 60.0) is None
    return held


def test_promised_blocks_go_back_when_the_kv_lands_the_request_ends_or_expires(
        backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        held = await _hold_prefill_and_decode(loads, ("landed", "ended", "expired"),
                                              "replica-a")
        assert await _promised(loads) == {"p": 0, "d": 60}
        await loads.set_capacity("d", 1000, 9)  # a new capacity keeps the promises
        assert list((await loads.get_reservation("landed")).items) == held
        # the transfer ended: the prefill part and the decode side's promise go back
        assert await loads.close_reservation("landed", ["p"], landed=True) == [
            held[0], LoadItem(worker="d", tokens=0, requests=0, blocks=20)]
        assert list((await loads.get_reservation("landed")).items) == [
            LoadItem(worker="d", tokens=0, requests=1)]
        assert await _promised(loads) == {"p": 0, "d": 40}
        assert await loads.close_reservation("ended", ["p"]) == held[:1]  # not landed
        assert await _promised(loads) == {"p": 0, "d": 40}
        assert await loads.close_reservation("ended") == held[1:]
        assert await loads.close_reservation("landed") == [
            LoadItem(worker="d", tokens=0, requests=1)]  # nothing promised twice
        assert await _promised(loads) == {"p": 0, "d": 20}
        clock.advance(61.0)
        assert [r.id for r in await loads.expire_reservations()] == ["expired"]
        assert await _promised(loads) == {"p": 0, "d": 0}
        assert await _usage(loads) == {"p": (0, 0), "d": (0, 0)}
    backend.run(body, loads=True)


async def _context(loads: Any) -> dict[str, int]:
    return {name: load.context for name, load in (await loads.loads()).items()}


def test_context_counts_while_the_kv_is_on_the_decode_worker_until_the_request_ends(
        backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        for worker in ("p", "d"):
            await loads.set_capacity(worker, 10_000, 8)
        local = [LoadItem(worker="d", tokens=100, requests=1, context=500)]
        remote = [LoadItem(worker="p", tokens=300, requests=1),
                  LoadItem(worker="d", tokens=0, requests=1, blocks=20, context=700)]
        assert await loads.open_reservation("local", "r", local, 60.0) is None
        assert await _context(loads) == {"p": 0, "d": 500}  # nothing promised: at once
        for rid in ("landed", "failed"):
            assert await loads.open_reservation(rid, "r", remote, 90.0) is None
        assert await _context(loads) == {"p": 0, "d": 500}  # the promise stands for it
        assert await loads.close_reservation("landed", ["p"], landed=True) == [
            remote[0], LoadItem(worker="d", tokens=0, requests=0, blocks=20)]
        assert await _context(loads) == {"p": 0, "d": 1200}
        assert list((await loads.get_reservation("landed")).items) == [
            LoadItem(worker="d", tokens=0, requests=1, context=700)]
        assert await loads.close_reservation("failed") == remote  # never landed
        assert await _context(loads) == {"p": 0, "d": 1200}
        assert await _promised(loads) == {"p": 0, "d": 0}
        assert await loads.close_reservation("landed") == [
            LoadItem(worker="d", tokens=0, requests=1, context=700)]
        assert await _context(loads) == {"p": 0, "d": 500}
        clock.advance(61.0)
        assert [r.id for r in await loads.expire_reservations()] == ["local"]
        assert await _context(loads) == {"p": 0, "d": 0}
        assert await _usage(loads) == {"p": (0, 0), "d": (0, 0)}
    backend.run(body, loads=True)


def test_a_close_without_report_gives_back_the_same_and_returns_nothing(
        backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        await _hold_prefill_and_decode(loads, ("a", "b"), "gateway")
        assert await _usage(loads) == {"p": (600, 2), "d": (0, 2)}
        assert await loads.close_reservation("a", ["p"], landed=True, report=False) == []
        assert await _usage(loads) == {"p": (300, 1), "d": (0, 2)}
        assert await _promised(loads) == {"p": 0, "d": 20}
        assert list((await loads.get_reservation("a")).items) == [
            LoadItem(worker="d", tokens=0, requests=1)]
        assert await loads.close_reservation("b", report=False) == []
        assert await _usage(loads) == {"p": (0, 0), "d": (0, 1)}
        assert await _promised(loads) == {"p": 0, "d": 0}
        assert await loads.close_reservation("a", report=False) == []
        assert await _usage(loads) == {"p": (0, 0), "d": (0, 0)}
        with pytest.raises(NotFoundError):
            await loads.get_reservation("a")
    backend.run(body, loads=True)


def test_reservations_expire_at_their_end_unless_renewed(backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        await loads.set_capacity("d", 1000, 8)
        await loads.open_reservation("short", "replica-a", _items(("d", 10, 1)), 5.0)
        await loads.open_reservation("long", "replica-a", _items(("d", 20, 1)), 5.0)
        clock.advance(4.0)
        renewed = await loads.renew_reservation("long", 10.0)
        assert renewed.expires_at == clock.now + 10.0
        assert await loads.expire_reservations() == []
        clock.advance(1.0)
        gone = await loads.expire_reservations()
        assert [(r.id, list(r.items)) for r in gone] == [("short", _items(("d", 10, 1)))]
        assert await _usage(loads) == {"d": (20, 1)}
        clock.advance(9.0)
        assert [r.id for r in await loads.expire_reservations()] == ["long"]
        assert await loads.expire_reservations() == []
        assert await _usage(loads) == {"d": (0, 0)}
    backend.run(body, loads=True)


def test_an_owner_whose_lease_lapses_loses_every_reservation(backend: Backend) -> None:
    async def body(loads: Any, clock: FakeClock) -> None:
        await loads.set_capacity("d", 1000, 8)
        await loads.renew_owner("replica-a", 10.0)
        for name, owner in (("a1", "replica-a"), ("a2", "replica-a"), ("b1", "replica-b")):
            await loads.open_reservation(name, owner, _items(("d", 1, 1)), 600.0)
        clock.advance(9.0)
        await loads.renew_owner("replica-a", 10.0)
        assert await loads.expire_reservations() == []
        clock.advance(10.0)  # replica-a stopped renewing (it died)
        gone = await loads.expire_reservations()
        assert sorted(r.id for r in gone) == ["a1", "a2"]
        assert await _usage(loads) == {"d": (1, 1)}  # b1: no lease, its own end only
        assert (await loads.get_reservation("b1")).owner == "replica-b"
        assert await loads.expire_reservations() == []
    backend.run(body, loads=True)


def test_two_replicas_sweeping_at_once_close_each_reservation_once(backend: Backend) -> None:
    async def body(a: Any, b: Any, clock: FakeClock) -> None:
        await a.set_capacity("d", 10_000, 100)
        await a.renew_owner("dead", 1.0)
        for i in range(20):
            await a.open_reservation(f"r{i}", "dead" if i % 2 else "live",
                                     _items(("d", 10, 1)), 5.0 if i % 4 == 0 else 60.0)
        clock.advance(5.0)
        swept = await asyncio.gather(*(store.expire_reservations()
                                       for _ in range(3) for store in (a, b)))
        ids = [r.id for batch in swept for r in batch]
        assert sorted(ids) == sorted({f"r{i}" for i in range(20) if i % 2 or i % 4 == 0})
        assert len(ids) == len(set(ids))
        assert await _usage(b) == {"d": (50, 5)}
    backend.run(body, replicas=2, loads=True)


# -- KV event log -------------------------------------------------------------------


def test_kv_events_are_read_in_order_from_any_id(backend: Backend) -> None:
    async def body(log: Any, clock: FakeClock) -> None:
        assert await log.kv_events_since(FIRST_EVENT_ID, 0) == ([], FIRST_EVENT_ID)
        ids = [await log.publish_kv_event(f'{{"n": {i}}}') for i in range(5)]
        assert len(set(ids)) == 5
        events, last = await log.kv_events_since(FIRST_EVENT_ID, 0, count=3)
        assert (events, last) == (['{"n": 0}', '{"n": 1}', '{"n": 2}'], ids[2])
        events, last = await log.kv_events_since(last, 0)
        assert (events, last) == (['{"n": 3}', '{"n": 4}'], ids[4])
        assert await log.kv_events_since(last, 50) == ([], last)
        with pytest.raises(ValidationError, match="last_id"):
            await log.kv_events_since("not-an-id", 0)
    backend.run(body, loads=True)


def test_a_blocking_read_wakes_on_a_publish(backend: Backend) -> None:
    async def body(log: Any, clock: FakeClock) -> None:
        last = await log.publish_kv_event("{}")
        reader = asyncio.create_task(log.kv_events_since(last, 5000))
        await asyncio.sleep(0.05)
        new_id = await log.publish_kv_event('{"new": true}')
        assert await asyncio.wait_for(reader, 2.0) == (['{"new": true}'], new_id)
    backend.run(body, loads=True)
