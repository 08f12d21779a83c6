"""What only a networked store must do: replicas sharing state, outages, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from scheduler.state import redis_store
from scheduler.state.redis_store import RedisStore
from scheduler.state.reservations import StoreUnavailableError
from tests.scheduler.state.harness import (
    Backend,
    FakeClock,
    free_port,
    start_durable_redis,
    start_redis_with,
)
from tests.scheduler.state.test_contract import job, record
from tests.scheduler.transfer.builders import registration
from tests.servers import RedisServer, start_redis
from topology.errors import ConflictError, NotFoundError

pytestmark = pytest.mark.process


@pytest.fixture
def shared(redis: RedisServer) -> Backend:
    """Redis stores on the module's server."""
    return Backend("redis", redis.url)


def test_two_replicas_never_hand_out_the_same_block(shared: Backend) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        await a.register_worker(registration("w0", num_blocks=64), 30.0)
        grants = await asyncio.gather(*(store.allocate_blocks("w0", 3)
                                        for _ in range(10) for store in (a, b)))
        taken = [block for grant in grants for block in grant]
        assert sorted(taken) == list(range(60))
        assert (await b.get_worker("w0")).free_blocks == 4
    shared.run(body, replicas=2)


def test_a_sweep_on_two_replicas_reports_each_dead_worker_once(shared: Backend) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        for i in range(6):
            await a.register_worker(registration(f"w{i}"), 5.0 if i % 2 else 50.0)
        clock.advance(6.0)
        reported = await asyncio.gather(a.expire(), b.expire())
        assert sorted(reported[0] + reported[1]) == ["w1", "w3", "w5"]
    shared.run(body, replicas=2)


def test_a_new_replica_recovers_the_whole_view(shared: Backend) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        lease = await a.register_worker(registration("prefill-0", num_blocks=16), 30.0)
        await a.register_worker(registration("decode-0", num_blocks=16), 30.0)
        await a.allocate_blocks("decode-0", 4)
        await a.release_blocks_at("decode-0", [0], clock.now + 1.0)
        await a.put_job("prefill-0", job("req-1"))
        pending = record("req-1")
        await a.put_transfer(pending)
        await a.aclose()
        assert [e.registration.name for e in await b.list_workers()] == ["decode-0",
                                                                          "prefill-0"]
        assert (await b.get_worker("prefill-0")).lease == lease
        assert (await b.get_worker("decode-0")).free_blocks == 12
        assert await b.transfers_of("decode-0") == [pending]
        assert [j.plan_id for j in await b.wait_jobs("prefill-0", 0)] == ["req-1"]
        clock.advance(1.0)
        await b.expire()
        assert await b.allocate_blocks("decode-0", 1) == [0]
    shared.run(body, replicas=2)


def test_a_job_or_a_transfer_stored_by_one_replica_wakes_a_poll_on_another(
        shared: Backend) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        await a.register_worker(registration("w0"), 30.0)
        poll = asyncio.create_task(b.wait_jobs("w0", 5.0))
        await a.put_transfer(record())
        watch = asyncio.create_task(b.wait_transfer("req-1", 5.0, 1))
        await asyncio.sleep(0.05)
        await a.put_job("w0", job("req-1"))
        await a.put_transfer(record(state="done"))
        assert [j.plan_id for j in await asyncio.wait_for(poll, 2.0)] == ["req-1"]
        assert (await asyncio.wait_for(watch, 2.0))[0].state == "done"
    shared.run(body, replicas=2)


def test_finished_transfers_expire_and_dead_workers_keys_have_a_safety_ttl(
        redis: RedisServer) -> None:
    async def main() -> None:
        clock = FakeClock()
        store = RedisStore(redis.url, prefix="ttl:", clock=clock,
                           finished_ttl_s=60.0, safety_ttl_s=0.3)
        raw = aioredis.Redis.from_url(redis.url)
        try:
            await store.put_transfer(record("req-1"))
            assert await raw.pttl("ttl:t:req-1") == -1
            await store.put_transfer(record("req-1", state="done"))
            assert 0 < await raw.pttl("ttl:t:req-1") <= 60_000
            await store.register_worker(registration("w0"), 0.05)
            await asyncio.sleep(0.5)
            # Nobody swept and the store's clock stood still: Redis dropped the keys.
            assert await raw.exists("ttl:w:w0") == 0
            assert await store.list_workers() == []
            clock.advance(1.0)
            assert await store.expire() == ["w0"]
        finally:
            await raw.aclose()
            await store.aclose()
    asyncio.run(main())


def test_prefixes_keep_deployments_apart(redis: RedisServer) -> None:
    async def main() -> None:
        one = RedisStore(redis.url, prefix="one:")
        two = RedisStore(redis.url, prefix="two:")
        await one.register_worker(registration("w0"), 30.0)
        assert await two.list_workers() == []
        await one.aclose()
        await two.aclose()
    asyncio.run(main())


def _every_call(store: RedisStore) -> list[Callable[[], Awaitable[Any]]]:
    return [lambda: store.register_worker(registration("w0"), 30.0),
            lambda: store.heartbeat("w0"), lambda: store.get_worker("w0"),
            store.list_workers, store.expire, lambda: store.remove_worker("w0"),
            lambda: store.allocate_blocks("w0", 1), lambda: store.take_blocks({"w0": 1}),
            lambda: store.claim_blocks("w0", [1]),
            lambda: store.release_blocks("w0", [1]),
            lambda: store.release_blocks_at("w0", [1], 5.0),
            lambda: store.put_job("w0", job()), lambda: store.wait_jobs("w0", 5.0),
            lambda: store.put_transfer(record()), lambda: store.get_transfer("req-1"),
            lambda: store.start_transfer(record(), [("w0", job())]),
            lambda: store.wait_transfer("req-1", 5.0, 0), lambda: store.transfers_of("w0"),
            lambda: store.set_capacity("w0", 1, 1), lambda: store.reserve("w0", 1),
            lambda: store.reserve_all([("w0", 1, 1)]), lambda: store.list_with_loads(store),
            lambda: store.release("w0", 1), store.loads, lambda: store.drop_load("w0"),
            lambda: store.publish_kv_event("{}"),
            lambda: store.kv_events_since("0", 5000), store.ping]


def test_every_call_fails_fast_while_redis_is_down_and_works_once_it_is_back() -> None:
    server = start_redis()
    port = server.port

    async def main() -> None:
        store = RedisStore(server.url, clock=FakeClock(), connect_timeout_s=0.2,
                           socket_timeout_s=0.5)
        await store.register_worker(registration("w0"), 30.0)
        server.stop()
        for call in _every_call(store):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as caught:
                await call()
            # A guard against hangs, not a timing claim (bench/ has those).
            assert time.monotonic() - started < 5.0, caught.value.operation
        revived = start_redis(port=port)
        try:
            # No persistence: what was written before the restart is gone.
            with pytest.raises(NotFoundError):
                await store.get_worker("w0")
            await store.register_worker(registration("w0"), 30.0)
            assert (await store.get_worker("w0")).lease.epoch == 1
        finally:
            await store.aclose()
            revived.stop()
    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_long_polls_work_on_a_server_without_blmpop() -> None:
    # Redis < 7 has no BLMPOP; renaming it away makes this server answer the same way.
    server = start_redis_with(free_port(), "--rename-command", "BLMPOP", "")

    async def main() -> None:
        store = RedisStore(server.url, clock=FakeClock())
        await store.register_worker(registration("w0"), 30.0)
        for round_ in range(2):
            poll = asyncio.create_task(store.wait_jobs("w0", 5.0))
            await asyncio.sleep(0.05)
            await store.put_job("w0", job(f"req-{round_}"))
            assert [j.plan_id for j in await asyncio.wait_for(poll, 2.0)] == [f"req-{round_}"]
        assert await store.wait_jobs("w0", 0.05) == []
        await store.aclose()
    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_a_frozen_redis_times_out_instead_of_hanging() -> None:
    server = start_redis()

    async def main() -> None:
        store = RedisStore(server.url, clock=FakeClock(), connect_timeout_s=0.2,
                           socket_timeout_s=0.3)
        await store.register_worker(registration("w0"), 30.0)
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            for call in (lambda: store.get_worker("w0"), lambda: store.allocate_blocks("w0", 1),
                         lambda: store.wait_jobs("w0", 0.3)):
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError):
                    await call()
                assert time.monotonic() - started < 3.0
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        # A timed-out command may still run once Redis wakes (at worst a leaked block).
        assert len(await store.allocate_blocks("w0", 1)) == 1
        await store.aclose()
    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_with_an_append_only_file_a_restart_keeps_registered_workers(tmp_path: Path) -> None:
    port = free_port()
    server = start_durable_redis(port, tmp_path)

    async def main() -> RedisServer:
        clock = FakeClock()
        before = RedisStore(server.url, clock=clock)
        lease = await before.register_worker(registration("w0", num_blocks=8), 30.0)
        await before.allocate_blocks("w0", 3)
        await before.put_job("w0", job("req-9"))
        await before.aclose()
        server.stop()
        revived = start_durable_redis(port, tmp_path)
        after = RedisStore(revived.url, clock=clock)
        try:
            entry = await after.get_worker("w0")
            assert (entry.lease, entry.free_blocks) == (lease, 5)
            assert [j.plan_id for j in await after.wait_jobs("w0", 0)] == ["req-9"]
        finally:
            await after.aclose()
        return revived
    revived = asyncio.run(main())
    revived.stop()
    server.stop()


# -- listings that follow the change log ----------------------------------------------


async def _commands(raw: Any, name: str) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def test_listing_workers_with_their_loads_is_one_script_call(shared: Backend,
                                                              redis: RedisServer) -> None:
    async def body(store: RedisStore, clock: FakeClock) -> None:
        raw = aioredis.Redis.from_url(redis.url, decode_responses=True)
        try:
            for i in range(4):
                await store.register_worker(registration(f"w{i}"), 30.0)
                await store.set_capacity(f"w{i}", 100, 2)
            await store.list_with_loads(store)
            await store.reserve("w1", 10)
            before = await _commands(raw, "evalsha")
            workers, loads = await store.list_with_loads(store)
            assert await _commands(raw, "evalsha") - before == 1
            assert len(workers) == 4 and loads["w1"].tokens == 10
        finally:
            await raw.aclose()
    shared.run(body)


def test_a_flushed_redis_is_read_afresh_not_patched(shared: Backend,
                                                   redis: RedisServer) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        for name in ("old-0", "old-1"):
            await b.register_worker(registration(name), 30.0)
        assert len(await a.list_workers()) == 2
        raw = aioredis.Redis.from_url(redis.url)
        try:
            # What a restart without persistence leaves: nothing, the view id included.
            await raw.delete(*await raw.keys(f"{a._k('')}*"))
        finally:
            await raw.aclose()
        await b.register_worker(registration("new-0"), 30.0)
        assert [e.registration.name for e in await a.list_workers()] == ["new-0"]
    shared.run(body, replicas=2)


def test_after_a_restart_a_change_log_that_went_back_is_read_afresh(tmp_path: Path) -> None:
    port = free_port()
    server = start_durable_redis(port, tmp_path)

    async def main() -> RedisServer:
        clock = FakeClock()
        a, b = (RedisStore(server.url, clock=clock) for _ in range(2))
        await b.register_worker(registration("w0", num_blocks=8), 30.0)
        await b.register_worker(registration("w1", num_blocks=8), 30.0)
        assert len(await a.list_workers()) == 2
        server.stop()
        revived = start_durable_redis(port, tmp_path)
        raw = aioredis.Redis.from_url(revived.url)
        try:
            # As if the restart lost the last writes (appendfsync everysec): seq went
            # back, and two changes take it to where replica a's view already was.
            await raw.set("toposched:seq", 0)
            await b.remove_worker("w1")
            await b.allocate_blocks("w0", 3)
            listed = await a.list_workers()
            assert [(e.registration.name, e.free_blocks) for e in listed] == [("w0", 5)]
        finally:
            await raw.aclose()
            await a.aclose()
            await b.aclose()
        return revived
    revived = asyncio.run(main())
    revived.stop()
    server.stop()


def test_a_replica_behind_the_trimmed_change_log_reads_everything(
        shared: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "TRIM_LAG", 1)

    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        for name in ("w0", "w1", "w2"):
            await b.register_worker(registration(name, num_blocks=8), 30.0)
        assert len(await a.list_workers()) == 3
        await b.remove_worker("w0")
        await b.allocate_blocks("w1", 2)
        await b.allocate_blocks("w2", 1)
        await b.expire()  # trims every change but the last: w0's removal is gone
        listed = await a.list_workers()
        assert [(e.registration.name, e.free_blocks) for e in listed] == [("w1", 6), ("w2", 7)]
    shared.run(body, replicas=2)


def test_registrations_stored_without_an_id_are_still_read(shared: Backend,
                                                           redis: RedisServer) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        await b.register_worker(registration("w0", num_blocks=8), 30.0)
        raw = aioredis.Redis.from_url(redis.url)
        try:
            await raw.hdel(a._k("w", "w0"), "rid")  # as an older version wrote it
        finally:
            await raw.aclose()
        for _ in range(2):
            assert (await a.get_worker("w0")).registration == registration("w0", num_blocks=8)
            grants = await a.take_blocks({"w0": 1})
            listed = await a.list_workers()
            assert listed[0].registration == grants["w0"].entry.registration
            assert listed[0].free_blocks == grants["w0"].entry.free_blocks
    shared.run(body, replicas=2)


def test_listings_racing_with_changes_end_at_the_latest_state(shared: Backend) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        for i in range(8):
            await b.register_worker(registration(f"w{i}", num_blocks=64), 30.0)
            await b.set_capacity(f"w{i}", 1000, 100)

        async def churn(i: int) -> None:
            await b.allocate_blocks(f"w{i % 8}", 1)
            await b.reserve(f"w{i % 8}", 1)

        await asyncio.gather(*(churn(i) for i in range(40)),
                             *(a.list_with_loads(a) for _ in range(40)))
        workers, loads = await a.list_with_loads(a)
        assert [e.free_blocks for e in workers] == [59] * 8
        assert [load.tokens for load in loads.values()] == [5] * 8
    shared.run(body, replicas=2)


def test_concurrent_multi_reservations_from_two_replicas_never_oversubscribe(
        shared: Backend) -> None:
    async def body(a: RedisStore, b: RedisStore, clock: FakeClock) -> None:
        await a.set_capacity("p", 10_000, 7)
        await a.set_capacity("d", 10_000, 9)
        results = await asyncio.gather(*(store.reserve_all([("p", 100, 1), ("d", 0, 1)])
                                         for _ in range(20) for store in (a, b)))
        assert results.count(None) == 7 and set(results) == {None, "p"}
        loads = await b.loads()
        assert (loads["p"].requests, loads["d"].requests, loads["p"].tokens) == (7, 7, 700)
    shared.run(body, replicas=2)


async def _expire_after(store: RedisStore, clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)
    await store.expire()


async def _heartbeat_later(store: RedisStore, clock: FakeClock, name: str) -> None:
    clock.advance(1.0)
    await store.heartbeat(name)


#: Every change a listing shows, made through replica ``b`` after replica ``a`` listed.
CHANGES: dict[str, Callable[[RedisStore, FakeClock], Awaitable[Any]]] = {
    "register": lambda b, c: b.register_worker(registration("w9"), 30.0),
    "re-register": lambda b, c: b.register_worker(registration("w0", num_blocks=4), 30.0),
    "heartbeat": lambda b, c: _heartbeat_later(b, c, "w0"),
    "remove": lambda b, c: b.remove_worker("w1"),
    "lease runs out": lambda b, c: _expire_after(b, c, 20.0),
    "allocate": lambda b, c: b.allocate_blocks("w0", 2),
    "take": lambda b, c: b.take_blocks({"w1": 1, "w0": 3}),
    "claim": lambda b, c: b.claim_blocks("w1", [5, 6]),
    "release": lambda b, c: b.release_blocks("w0", [0]),
    "quarantine ends": lambda b, c: _expire_after(b, c, 2.0),
    "set capacity": lambda b, c: b.set_capacity("w1", 50, 5),
    "reserve": lambda b, c: b.reserve("w0", 5),
    "reserve all": lambda b, c: b.reserve_all([("w0", 1, 1), ("w1", 0, 1)]),
    "release load": lambda b, c: b.release("w0", 10),
    "drop load": lambda b, c: b.drop_load("w0"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_reaches_another_replicas_listing(redis: RedisServer, change: str) -> None:
    async def main() -> None:
        clock, prefix = FakeClock(), f"chg-{uuid.uuid4().hex[:8]}:"
        a, b = (RedisStore(redis.url, prefix=prefix, clock=clock) for _ in range(2))
        try:
            await b.register_worker(registration("w0", num_blocks=8), 30.0)
            await b.register_worker(registration("w1", num_blocks=8), 10.0)
            await b.set_capacity("w0", 100, 4)
            await b.set_capacity("w1", 100, 4)
            await b.reserve("w0", 20)
            await b.allocate_blocks("w0", 1)
            await b.release_blocks_at("w0", [0], clock.now + 1.0)
            before = await a.list_with_loads(a)
            await CHANGES[change](b, clock)
            fresh = RedisStore(redis.url, prefix=prefix, clock=clock)  # reads everything
            try:
                expected = await fresh.list_with_loads(fresh)
            finally:
                await fresh.aclose()
            assert expected != before  # the change shows in a listing at all
            assert await a.list_with_loads(a) == expected
        finally:
            await a.aclose()
            await b.aclose()
    asyncio.run(main())


def test_a_retried_start_transfer_is_its_own_not_a_conflict(
        shared: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py re-sends a command once after a timeout: when the first send ran, the
    retry must succeed (not call it a conflict, which frees the blocks it uses)."""
    fixed = uuid.uuid4()
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)  # the store draws its token here

    async def body(store: RedisStore, clock: FakeClock) -> None:
        for name in ("w0", "prefill-0", "decode-0"):  # (the plan's sides are checked)
            await store.register_worker(registration(name), 30.0)
        await store.start_transfer(record(), [("w0", job())])
        await store.start_transfer(record(), [("w0", job())])  # the retry: same token
        assert len(await store.wait_jobs("w0", 0)) == 1  # queued once
        monkeypatch.undo()
        with pytest.raises(ConflictError):  # another caller's id: a conflict
            await store.start_transfer(record(), [("w0", job())])
    shared.run(body)
