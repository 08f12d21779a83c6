"""Shared documents: one contract for memory and Redis (compare-and-set, no lost edit)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from scheduler.state.docs import ABSENT, MemoryDocs, SharedDocs
from scheduler.state.redis_docs import RedisDocs
from scheduler.state.reservations import StoreUnavailableError
from tests.scheduler.state.harness import free_port
from tests.servers import RedisServer

Body = Callable[[SharedDocs, SharedDocs], Awaitable[None]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.process)])
def run(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Run a body with two views of one fresh set of documents (two replicas)."""
    url = request.getfixturevalue("redis").url if request.param == "redis" else None

    async def main(body: Body) -> None:
        if url is None:
            memory = MemoryDocs()
            await body(memory, memory)
            return
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        a, b = RedisDocs(url, prefix=prefix), RedisDocs(url, prefix=prefix)
        try:
            await body(a, b)
        finally:
            await a.aclose()
            await b.aclose()

    return lambda body: asyncio.run(main(body))


def test_put_creates_at_absent_then_needs_the_current_version(run: Any) -> None:
    async def body(a: SharedDocs, b: SharedDocs) -> None:
        assert await a.get("doc") is None
        assert await a.put("doc", "one", ABSENT) == 1
        assert await b.get("doc") == (1, "one")
        assert await b.put("doc", "again", ABSENT) is None
        assert await b.put("doc", "two", 1) == 2
        assert await a.get("doc") == (2, "two")
    run(body)


def test_a_stale_writer_loses_and_changes_nothing(run: Any) -> None:
    async def body(a: SharedDocs, b: SharedDocs) -> None:
        await a.put("doc", "base", ABSENT)
        assert await a.put("doc", "a's edit", 1) == 2
        assert await b.put("doc", "b's edit on a stale copy", 1) is None
        assert await b.get("doc") == (2, "a's edit")
    run(body)


def test_versions_get_many_and_delete(run: Any) -> None:
    async def body(a: SharedDocs, b: SharedDocs) -> None:
        await a.put("x", "1", ABSENT)
        await a.put("y", "2", ABSENT)
        await a.put("y", "3", 1)
        assert await b.versions(["x", "y", "z"]) == {"x": 1, "y": 2, "z": ABSENT}
        assert await b.get_many(["z", "y", "x"]) == {"x": (1, "1"), "y": (2, "3")}
        assert await b.get_many([]) == {} and await b.versions([]) == {}
        assert await b.delete("x") and not await a.delete("x")
        assert await a.versions(["x"]) == {"x": ABSENT} and await a.get("x") is None
    run(body)


def test_large_texts_come_back_whole(run: Any) -> None:
    async def body(a: SharedDocs, b: SharedDocs) -> None:
        text = json.dumps({"hosts": {f"h{i}": "x" * 1000 + "é" for i in range(4000)}})
        assert await a.put("big", text, ABSENT) == 1
        assert await b.get("big") == (1, text)
    run(body)


def test_racing_read_modify_writes_lose_no_edit(run: Any) -> None:
    """40 increments through two replicas, each a read → edit → compare-and-set loop."""
    async def increment(docs: SharedDocs) -> int:
        tries = 0
        while True:
            tries += 1
            version, text = await docs.get("counter") or (ABSENT, "0")
            await asyncio.sleep(0)  # let the others read the same version
            if await docs.put("counter", str(int(text) + 1), version) is not None:
                return tries

    async def body(a: SharedDocs, b: SharedDocs) -> None:
        tries = await asyncio.gather(*(increment(a if i % 2 else b) for i in range(40)))
        assert await a.get("counter") == (40, "40")
        assert max(tries) > 1, "the writers raced"
    run(body)


@pytest.mark.process
def test_a_put_sent_again_after_it_ran_answers_its_version(redis: RedisServer) -> None:
    """redis-py resends a command after a lost connection: the resent script finds its
    own write and answers it, instead of 'another writer came first'."""
    async def body() -> None:
        docs = RedisDocs(redis.url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
        script, keys = docs._put, docs._keys
        token = uuid.uuid4().hex
        assert await script(keys=keys, args=["doc", "text", 0, token]) == 1
        assert await script(keys=keys, args=["doc", "text", 0, token]) == 1
        assert await script(keys=keys, args=["doc", "other", 0, uuid.uuid4().hex]) is None
        assert await docs.get("doc") == (1, "text")
        await docs.aclose()
    asyncio.run(body())


@pytest.mark.process
def test_documents_outlive_the_replica_that_wrote_them(redis: RedisServer) -> None:
    async def body() -> None:
        prefix = f"test-{uuid.uuid4().hex[:8]}:"
        first = RedisDocs(redis.url, prefix=prefix)
        await first.put("topology", "{}", ABSENT)
        await first.aclose()
        restarted = RedisDocs(redis.url, prefix=prefix)
        assert await restarted.get("topology") == (1, "{}")
        other = RedisDocs(redis.url, prefix="someone-else:")
        assert await other.get("topology") is None
        await restarted.aclose()
        await other.aclose()
    asyncio.run(body())


def test_an_unreachable_redis_is_store_unavailable() -> None:
    async def body() -> None:
        docs = RedisDocs(f"redis://127.0.0.1:{free_port()}/0", prefix="gone:")
        calls = [docs.get("a"), docs.get_many(["a"]), docs.put("a", "x", 0),
                 docs.delete("a"), docs.versions(["a"])]
        for call in calls:
            with pytest.raises(StoreUnavailableError):
                await call
    asyncio.run(body())
