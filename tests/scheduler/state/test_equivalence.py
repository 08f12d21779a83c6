"""Property: random operation sequences give the same answers on Redis as in memory
(one Redis store; and two replicas sharing one Redis, loads included, against one memory
store: each replica's listing follows the other's changes through the change log)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.state.memory import MemoryStore
from scheduler.state.redis_store import RedisStore
from scheduler.state.reservations import MemoryLoads
from tests.scheduler.state.harness import FakeClock
from tests.scheduler.transfer.builders import registration
from tests.servers import RedisServer
from topology.errors import ToposchedError

pytestmark = pytest.mark.process

workers = st.sampled_from(["a", "b"])
blocks = st.lists(st.integers(0, 14), max_size=4)
operations = st.one_of(
    st.tuples(st.just("register"), workers, st.integers(1, 6), st.sampled_from([1.0, 5.0])),
    st.tuples(st.just("heartbeat"), workers),
    st.tuples(st.just("allocate"), workers, st.integers(0, 6)),
    st.tuples(st.just("claim"), workers, blocks),
    st.tuples(st.just("release"), workers, blocks),
    st.tuples(st.just("release_at"), workers, blocks, st.integers(0, 3)),
    st.tuples(st.just("advance"), st.integers(0, 3)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("remove"), workers),
    st.tuples(st.just("get"), workers),
    st.tuples(st.just("list")),
)


async def apply(store: Any, clock: FakeClock, op: tuple[Any, ...]) -> Any:
    """Run one operation; the answer, or the class of the domain error it raised."""
    kind, *args = op
    calls = {
        "register": lambda: store.register_worker(registration(args[0], num_blocks=args[1]),
                                                  args[2]),
        "heartbeat": lambda: store.heartbeat(args[0]),
        "allocate": lambda: store.allocate_blocks(args[0], args[1]),
        "claim": lambda: store.claim_blocks(args[0], args[1]),
        "release": lambda: store.release_blocks(args[0], args[1]),
        "release_at": lambda: store.release_blocks_at(args[0], args[1], clock.now + args[2]),
        "expire": lambda: _sorted(store.expire()),
        "remove": lambda: store.remove_worker(args[0]),
        "get": lambda: store.get_worker(args[0]),
        "list": store.list_workers,
    }
    try:
        return await calls[kind]()
    except ToposchedError as exc:
        return type(exc).__name__


async def _sorted(names: Any) -> list[str]:
    return sorted(await names)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(operations, max_size=25))
def test_redis_answers_like_memory(redis: RedisServer, ops: list[tuple[Any, ...]]) -> None:
    async def main() -> None:
        mem_clock, redis_clock = FakeClock(), FakeClock()
        memory = MemoryStore(mem_clock)
        store = RedisStore(redis.url, prefix=f"eq-{uuid.uuid4().hex[:8]}:", clock=redis_clock)
        try:
            for step, op in enumerate(ops):
                if op[0] == "advance":
                    mem_clock.advance(op[1])
                    redis_clock.advance(op[1])
                    continue
                expected = await apply(memory, mem_clock, op)
                assert await apply(store, redis_clock, op) == expected, (step, op)
        finally:
            await store.aclose()
    asyncio.run(main())


replica = st.integers(0, 1)
load_operations = st.one_of(
    st.tuples(st.just("capacity"), workers, st.integers(0, 50), st.integers(0, 3)),
    st.tuples(st.just("reserve_all"), st.lists(st.tuples(workers, st.integers(0, 30),
                                                         st.integers(0, 2)), max_size=3)),
    st.tuples(st.just("release_load"), workers, st.integers(0, 30), st.integers(0, 2)),
    st.tuples(st.just("drop_load"), workers),
    st.tuples(st.just("take"), st.dictionaries(workers, st.integers(0, 4), max_size=2)),
    st.tuples(st.just("listing")),
)


async def apply_shared(store: Any, loads: Any, clock: FakeClock, op: tuple[Any, ...]) -> Any:
    """One operation of either kind (``loads``: the load store beside ``store``)."""
    kind, *args = op
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "capacity": lambda: loads.set_capacity(*args),
        "reserve_all": lambda: loads.reserve_all(args[0]),
        "release_load": lambda: loads.release(*args),
        "drop_load": lambda: loads.drop_load(args[0]),
        "take": lambda: _grants(store.take_blocks(args[0])),
        "listing": lambda: store.list_with_loads(loads),
    }
    if kind not in calls:
        return await apply(store, clock, op)
    try:
        return await calls[kind]()
    except ToposchedError as exc:
        return type(exc).__name__


async def _grants(grants: Any) -> dict[str, Any]:
    return {name: (g.entry, g.blocks) for name, g in (await grants).items()}


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(replica, st.one_of(operations, load_operations)), max_size=40))
def test_two_redis_replicas_answer_like_one_memory_store(
        redis: RedisServer, ops: list[tuple[int, tuple[Any, ...]]]) -> None:
    async def main() -> None:
        mem_clock, redis_clock = FakeClock(), FakeClock()
        memory, memory_loads = MemoryStore(mem_clock), MemoryLoads()
        prefix = f"eq2-{uuid.uuid4().hex[:8]}:"
        # resync_s=inf: every listing after the first follows the change log only.
        replicas = [RedisStore(redis.url, prefix=prefix, clock=redis_clock,
                               resync_s=float("inf")) for _ in range(2)]
        try:
            for step, (which, op) in enumerate(ops):
                if op[0] == "advance":
                    mem_clock.advance(op[1])
                    redis_clock.advance(op[1])
                    continue
                expected = await apply_shared(memory, memory_loads, mem_clock, op)
                store, other = replicas[which], replicas[1 - which]
                assert await apply_shared(store, store, redis_clock, op) == expected, (step, op)
                # The other replica's listing must show the change at once.
                assert await other.list_with_loads(other) == \
                    await memory.list_with_loads(memory_loads), (step, op)
        finally:
            for store in replicas:
                await store.aclose()
    asyncio.run(main())
