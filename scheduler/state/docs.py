"""Shared documents: named texts with a version, written by compare-and-set.

Replicas share a few whole documents that change rarely (the topology feeds and the
fabric built from them, the placement in force, placement job records). Each is a text
under a name, with a version that counts its writes (0: no such document).
``put(name, text, expected_version)`` writes only when the document is still at
``expected_version`` and answers the new version, or None when another writer came
first; the caller then reads the latest version, applies its change again and retries,
so no edit is lost. ``versions`` is cheap enough to poll.

:class:`MemoryDocs` serves one process; :class:`~scheduler.state.redis_docs.RedisDocs`
serves several replicas. Both raise
:class:`~scheduler.state.reservations.StoreUnavailableError` (Redis) and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

#: The version of a document that does not exist (``put`` with it creates one).
ABSENT = 0


class SharedDocs(Protocol):
    """Named, versioned texts; writes are compare-and-set on the version."""

    async def get(self, name: str) -> tuple[int, str] | None:
        """The document's version and text, or None when there is none."""

    async def get_many(self, names: Sequence[str]) -> dict[str, tuple[int, str]]:
        """The documents among ``names`` that exist, read together in one step."""

    async def put(self, name: str, text: str, expected_version: int) -> int | None:
        """Write ``text`` if the document is at ``expected_version`` (:data:`ABSENT`:
        creates it); the new version, or None (nothing written) when it is not."""

    async def delete(self, name: str) -> bool:
        """Remove a document; False when there was none. A name written again after a
        delete starts over at version 1, so delete only names that are never reused."""

    async def versions(self, names: Sequence[str]) -> dict[str, int]:
        """The version of each of ``names`` (:data:`ABSENT` for a missing one)."""


class MemoryDocs:
    """:class:`SharedDocs` for one process (every method completes without yielding)."""

    def __init__(self) -> None:
        self._docs: dict[str, tuple[int, str]] = {}

    async def get(self, name: str) -> tuple[int, str] | None:
        """The document's version and text, or None when there is none."""
        return self._docs.get(name)

    async def get_many(self, names: Sequence[str]) -> dict[str, tuple[int, str]]:
        """The documents among ``names`` that exist."""
        return {name: self._docs[name] for name in names if name in self._docs}

    async def put(self, name: str, text: str, expected_version: int) -> int | None:
        """Write ``text`` if the document is at ``expected_version``; the new version."""
        version = self._docs.get(name, (ABSENT, ""))[0]
        if version != expected_version:
            return None
        self._docs[name] = (version + 1, text)
        return version + 1

    async def delete(self, name: str) -> bool:
        """Remove a document; False when there was none."""
        return self._docs.pop(name, None) is not None

    async def versions(self, names: Sequence[str]) -> dict[str, int]:
        """The version of each of ``names`` (0 for a missing one)."""
        return {name: self._docs.get(name, (ABSENT, ""))[0] for name in names}
