"""Logging a background loop that keeps failing: once when it starts, once when it ends.

A loop that retries every half second (the lease sweep, following shared documents,
replicating KV events) used to log a full traceback on every round while Redis was
down. :class:`Outage` logs the first failure of a run (with the traceback only for an
error that is not the store being unavailable), counts the rest, and logs one line when
the loop works again.
"""

from __future__ import annotations

import logging
import time

from scheduler.state.reservations import StoreUnavailableError


class Outage:
    """The failure state of one background loop (``what`` names it in the log)."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self.since: float | None = None
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        """A round failed: logged if it is the first of an outage."""
        self.failures += 1
        if self.since is not None:
            return
        self.since = time.monotonic()
        if isinstance(exc, StoreUnavailableError):
            self.log.warning("%s failed: %s (logged once until it works again)", self.what,
                             exc.detail)
        else:
            self.log.error("%s failed (logged once until it works again)", self.what,
                           exc_info=exc)

    def ok(self) -> None:
        """A round worked: ends an outage, with one line."""
        if self.since is None:
            return
        self.log.warning("%s works again after %.1f s (%d failed round(s))", self.what,
                         time.monotonic() - self.since, self.failures)
        self.since, self.failures = None, 0
