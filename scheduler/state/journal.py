"""A bounded record of which names changed, so that a reader can catch up by name.

The route path keeps a snapshot of every worker and patches it between requests. With
10,000 workers, reading the whole listing to find the two that changed costs
milliseconds (every entry touched); a store that journals its changes lets the reader
ask "what changed since version v" and look up only those names.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

#: Changes a journal remembers; a reader further behind reads the whole listing.
DEFAULT_JOURNAL_LENGTH = 4096


class Journal:
    """Names touched, in order, each with the next version number (bounded)."""

    __slots__ = ("_base", "_names", "maxlen", "version")

    def __init__(self, maxlen: int = DEFAULT_JOURNAL_LENGTH) -> None:
        """An empty journal at version 0 keeping the last ``maxlen`` changes."""
        self.maxlen = maxlen
        #: The version after the last change.
        self.version = 0
        #: The version before the oldest change still held.
        self._base = 0
        self._names: deque[str] = deque()

    def touch(self, name: str) -> None:
        """Record that ``name`` changed."""
        self.version += 1
        self._names.append(name)
        if len(self._names) > self.maxlen:
            self._names.popleft()
            self._base += 1

    def forget(self) -> None:
        """Drop the record: every reader behind the current version reads in full."""
        self.version += 1
        self._base = self.version
        self._names.clear()

    def since(self, version: int, limit: int | None = None) -> set[str] | None:
        """The names changed after ``version``; None when that is no longer known (or
        more than ``limit`` changes happened since)."""
        if version < self._base or version > self.version:
            return None
        behind = self.version - version
        if limit is not None and behind > limit:
            return None
        return set(islice(reversed(self._names), behind))
