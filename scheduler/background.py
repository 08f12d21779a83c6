"""Stopping background tasks for good, with a bound.

One ``task.cancel()`` is not always enough on Python 3.11: ``asyncio.wait_for`` can
swallow a cancellation that arrives as its inner call completes (fixed in 3.12), and a
``while True`` loop around such a call then runs on. A loop like that, left for the
event loop's own shutdown (which cancels once and waits without limit), hung a CI run's
``TestClient`` exit for the whole test timeout. :func:`stop_tasks` cancels again until
every task has ended, and gives up after a deadline, naming what would not stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: How often a task that swallowed its cancellation is cancelled again.
RECANCEL_S = 0.1


async def stop_tasks(tasks: Iterable[asyncio.Task[object]], timeout_s: float = 5.0) -> None:
    """Cancel ``tasks`` until each has ended, or ``timeout_s`` has passed (logged)."""
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + timeout_s
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("background tasks still running after %.1f s of cancelling: %s",
                        timeout_s, ", ".join(sorted(t.get_name() for t in pending)))
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
