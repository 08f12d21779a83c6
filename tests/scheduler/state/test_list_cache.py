"""Listing workers reuses entries between calls; every change must still show.

The stores cache what ``list_workers`` hands out (memory: entries and the name order;
Redis: every entry and load, brought up to date from the change log). Each test changes
one thing between two listings; on Redis, changes made through another replica must
show as well.
"""

from __future__ import annotations

from typing import Any

from scheduler.state.redis_store import RedisStore
from scheduler.state.reservations import MemoryLoads
from tests.scheduler.state.harness import Backend, FakeClock
from tests.scheduler.transfer.builders import registration


def _by_name(entries: list[Any]) -> dict[str, Any]:
    return {e.registration.name: e for e in entries}


def test_free_blocks_follow_allocations_and_releases(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0", num_blocks=8), 10.0)
        assert _by_name(await store.list_workers())["w0"].free_blocks == 8
        taken = await store.allocate_blocks("w0", 3)
        assert _by_name(await store.list_workers())["w0"].free_blocks == 5
        assert (await store.get_worker("w0")).free_blocks == 5
        await store.release_blocks("w0", taken[:2])
        assert _by_name(await store.list_workers())["w0"].free_blocks == 7
    backend.run(body)


def test_a_heartbeat_shows_the_new_lease(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0"), 10.0)
        before = _by_name(await store.list_workers())["w0"].lease
        clock.advance(4.0)
        lease = await store.heartbeat("w0")
        after = _by_name(await store.list_workers())["w0"].lease
        assert after == lease and after.expires_at == before.expires_at + 4.0
    backend.run(body)


def test_re_registration_shows_the_new_registration(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("w0", gpus=["h0/gpu0"]), 10.0)
        await store.list_workers()
        moved = registration("w0", gpus=["h1/gpu3"], num_blocks=32)
        await store.register_worker(moved, 10.0)
        entry = _by_name(await store.list_workers())["w0"]
        assert entry.registration == moved
        assert (entry.lease.epoch, entry.free_blocks) == (2, 32)
    backend.run(body)


def test_names_stay_sorted_as_workers_come_and_go(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        for name in ("m", "c", "x"):
            await store.register_worker(registration(name), 10.0)
        assert [e.registration.name for e in await store.list_workers()] == ["c", "m", "x"]
        await store.register_worker(registration("a"), 10.0)
        await store.remove_worker("m")
        assert [e.registration.name for e in await store.list_workers()] == ["a", "c", "x"]
    backend.run(body)


def test_an_expired_lease_drops_out_of_the_cached_listing(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        await store.register_worker(registration("short"), 2.0)
        await store.register_worker(registration("long"), 20.0)
        assert len(await store.list_workers()) == 2
        clock.advance(5.0)
        assert [e.registration.name for e in await store.list_workers()] == ["long"]
    backend.run(body)


def _names(entries: list[Any]) -> list[str]:
    return [e.registration.name for e in entries]


def test_a_listing_follows_every_kind_of_change_made_by_another_replica(
        backend: Backend) -> None:
    async def body(a: Any, b: Any, clock: FakeClock) -> None:
        # Redis: each replica is its own store and load store; memory: one of each.
        shared = MemoryLoads()
        la, lb = (a, b) if isinstance(a, RedisStore) else (shared, shared)

        async def seen() -> tuple[dict[str, Any], dict[str, Any]]:
            workers, loads = await a.list_with_loads(la)
            return _by_name(workers), loads

        for name in ("w0", "w1", "w2"):
            await b.register_worker(registration(name, num_blocks=8), 10.0)
        await lb.set_capacity("w0", 100, 2)
        workers, loads = await seen()
        assert sorted(workers) == ["w0", "w1", "w2"] and list(loads) == ["w0"]
        taken = await b.allocate_blocks("w0", 3)
        await b.claim_blocks("w1", [0, 1])
        assert await lb.reserve_all([("w0", 40, 1)]) is None
        workers, loads = await seen()
        assert (workers["w0"].free_blocks, workers["w1"].free_blocks) == (5, 6)
        assert (loads["w0"].tokens, loads["w0"].requests) == (40, 1)
        await b.release_blocks("w0", taken)
        await lb.release("w0", 40)
        await b.release_blocks_at("w1", [0], clock.now + 1.0)
        clock.advance(1.0)
        await b.expire()
        workers, loads = await seen()
        assert (workers["w0"].free_blocks, workers["w1"].free_blocks) == (8, 7)
        assert loads["w0"].tokens == 0
        lease = await b.heartbeat("w2")
        await b.register_worker(registration("w1", num_blocks=4), 10.0)
        await b.remove_worker("w0")
        await lb.drop_load("w0")
        await lb.set_capacity("w2", 10, 1)
        workers, loads = await seen()
        assert sorted(workers) == ["w1", "w2"] and list(loads) == ["w2"]
        assert workers["w2"].lease == lease
        assert (workers["w1"].lease.epoch, workers["w1"].free_blocks) == (2, 4)
        clock.advance(9.5)
        await b.heartbeat("w1")
        clock.advance(1.0)
        assert _names(await a.list_workers()) == ["w1"]  # w2's lease ran out
        assert await b.expire() == ["w2"]
        assert _names(await a.list_workers()) == ["w1"]
    backend.run(body, replicas=2)


def test_unchanged_workers_keep_their_objects_between_listings(backend: Backend) -> None:
    async def body(store: Any, clock: FakeClock) -> None:
        loads = store if isinstance(store, RedisStore) else MemoryLoads()
        for name in ("w0", "w1"):
            await store.register_worker(registration(name), 10.0)
            await loads.set_capacity(name, 100, 2)
        before, before_loads = await store.list_with_loads(loads)
        await store.allocate_blocks("w1", 1)
        await loads.reserve("w1", 5)
        after, after_loads = await store.list_with_loads(loads)
        # The snapshot code downstream settles unchanged workers by identity.
        assert after[0] is before[0] and after_loads["w0"] is before_loads["w0"]
        assert after[1].registration is before[1].registration
        assert after[1] is not before[1] and after_loads["w1"] is not before_loads["w1"]
    backend.run(body)
