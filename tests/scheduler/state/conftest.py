"""Fixtures with a lifetime: one private redis-server per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scheduler.state.harness import Backend
from tests.servers import RedisServer, redis_server

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.process)]


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A private, non-persistent redis-server for the module's tests."""
    with redis_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each store kind in turn; Redis is started only when a Redis test runs."""
    if request.param == "memory":
        return Backend("memory")
    server: RedisServer = request.getfixturevalue("redis")
    return Backend("redis", server.url)
