"""The one translation of Redis client errors into the store's error tree."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scheduler.state.reservations import StoreUnavailableError

_P = ParamSpec("_P")
_T = TypeVar("_T")


def translate(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Turn a lost or slow Redis into :class:`StoreUnavailableError` (foreign → domain)."""
    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await fn(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise StoreUnavailableError(fn.__name__, str(exc) or type(exc).__name__) from exc
    return wrapper
