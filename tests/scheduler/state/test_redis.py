"""What only a networked store must do: replicas sharing state, outages, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

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
from topology.errors import NotFoundError

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
            lambda: store.allocate_blocks("w0", 1), lambda: store.claim_blocks("w0", [1]),
            lambda: store.release_blocks("w0", [1]),
            lambda: store.release_blocks_at("w0", [1], 5.0),
            lambda: store.put_job("w0", job()), lambda: store.wait_jobs("w0", 5.0),
            lambda: store.put_transfer(record()), lambda: store.get_transfer("req-1"),
            lambda: store.wait_transfer("req-1", 5.0, 0), lambda: store.transfers_of("w0"),
            lambda: store.set_capacity("w0", 1, 1), lambda: store.reserve("w0", 1),
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
