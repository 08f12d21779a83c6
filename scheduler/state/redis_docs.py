"""Shared documents in Redis (:class:`~scheduler.state.docs.SharedDocs` for replicas).

Keys, under the store's prefix (see docs/state.md):

* ``docs`` — hash, name → text;
* ``docs-v`` — hash, name → version (count of writes);
* ``docs-w`` — hash, name → token of the last write.

``put`` is one Lua script (check the version, write the three fields), so two replicas
never both win the same version. redis-py sends a command again after a lost
connection; a script that did run the first time then finds the version one past the
expected one with its own token and answers that version, instead of "another writer
came first" (the same idea as ``start_transfer``'s token). ``get_many`` and
``delete`` are ``MULTI`` transactions; ``versions`` is one ``HMGET``. The hashes have
no TTL: they survive replica restarts, and with ``appendonly yes`` a Redis restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from scheduler.state.docs import ABSENT
from scheduler.state.redis_errors import translate

__all__ = ["RedisDocs"]

# KEYS: texts, versions, tokens. ARGV: name, text, expected version, write token.
PUT = """
local version = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local expected = tonumber(ARGV[3])
if version ~= expected then
  if version == expected + 1 and redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[4] then
    return version
  end
  return false
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], version + 1)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return version + 1
"""


class RedisDocs:
    """Named, versioned texts in three Redis hashes; compare-and-set writes."""

    def __init__(self, url: str, *, prefix: str = "toposched:",
                 connect_timeout_s: float = 0.5, socket_timeout_s: float = 2.0) -> None:
        self._keys = [prefix + "docs", prefix + "docs-v", prefix + "docs-w"]
        # A document may be megabytes (every host's captures): a longer socket timeout
        # than the store's one-line commands, and one retry on a fresh connection.
        self._r = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=connect_timeout_s,
            socket_timeout=socket_timeout_s, retry=Retry(NoBackoff(), 1))
        self._put = self._r.register_script(PUT)

    @translate
    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._r.aclose()

    @translate
    async def get(self, name: str) -> tuple[int, str] | None:
        """The document's version and text, or None when there is none."""
        return (await self.get_many([name])).get(name)

    @translate
    async def get_many(self, names: Sequence[str]) -> dict[str, tuple[int, str]]:
        """The documents among ``names`` that exist, read in one transaction."""
        if not names:
            return {}
        pipe = self._r.pipeline(transaction=True)
        pipe.hmget(self._keys[1], list(names))
        pipe.hmget(self._keys[0], list(names))
        versions, texts = cast(list[list[Any]], await pipe.execute())
        return {name: (int(version), str(text))
                for name, version, text in zip(names, versions, texts, strict=True)
                if version is not None and text is not None}

    @translate
    async def put(self, name: str, text: str, expected_version: int) -> int | None:
        """Write ``text`` if the document is at ``expected_version``; the new version,
        or None when another writer came first."""
        done = await self._put(keys=self._keys, args=[name, text, expected_version,
                                                      uuid.uuid4().hex])
        return None if done is None else int(done)

    @translate
    async def delete(self, name: str) -> bool:
        """Remove a document; False when there was none."""
        pipe = self._r.pipeline(transaction=True)
        for key in self._keys:
            pipe.hdel(key, name)
        return bool((await pipe.execute())[0])

    @translate
    async def versions(self, names: Sequence[str]) -> dict[str, int]:
        """The version of each of ``names`` (0 for a missing one)."""
        if not names:
            return {}
        found = cast(list[Any], await self._r.hmget(self._keys[1], list(names)))
        return {name: ABSENT if v is None else int(v)
                for name, v in zip(names, found, strict=True)}
