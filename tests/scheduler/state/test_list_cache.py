"""Listing workers reuses entries between calls; every change must still show.

The stores cache what ``list_workers`` hands out (memory: entries and the name order;
Redis: parsed registrations). Each test changes one thing between two listings.
"""

from __future__ import annotations

from typing import Any

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
