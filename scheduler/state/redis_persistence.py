"""Whether a Redis server keeps its data across a restart (``CONFIG GET``).

Without persistence a Redis restart loses every worker, lease, reservation and transfer
in flight (docs/state.md, "Redis unavailable, restarts, durability"); a scheduler that
shares state through such a server says so when it starts.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError


async def missing_persistence(url: str, timeout_s: float = 2.0) -> str | None:
    """Why ``url``'s data would not survive a restart, or None when it would (append-only
    file or snapshots on). Raises ``RedisError``/``OSError`` when the server does not
    answer, or refuses ``CONFIG`` (managed services often do)."""
    client = aioredis.Redis.from_url(url, socket_timeout=timeout_s,
                                     socket_connect_timeout=timeout_s, decode_responses=True)
    try:
        aof = str((await client.config_get("appendonly")).get("appendonly") or "")
        save = str((await client.config_get("save")).get("save") or "")
    finally:
        await client.aclose()
    if aof == "yes" or save.strip():
        return None
    return "appendonly is off and no snapshots are configured (save is empty)"


__all__ = ["RedisError", "missing_persistence"]
