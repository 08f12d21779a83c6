"""Keeping the service's long-lived heap out of the garbage collector's full passes.

The service holds per-worker state for as long as the worker lives (registration,
lease, free-block map, snapshot entries): about twenty objects each that the cyclic
collector tracks. A full (generation-2) collection walks every one of them with the
event loop stopped: ~330 ms at 10,000 workers on the benchmark machine, and it came
whenever a quarter as many objects again had survived since the last one — so
heartbeats, whose new leases survive, brought one every few seconds at that size.

:func:`long_lived_heap` freezes what start-up leaves (as before), and then, after
each generation-1 collection, what survived it (:func:`gc.freeze`, a constant-time
list splice): survivors of two young collections are state that lives on, and a full
collection then walks only the few objects that survived since, however many workers
there are. Frozen objects are still freed by reference counting when their last
reference goes; what is given up is the reclaiming of *reference cycles* among them.
The worker lifecycle and the route path make none
(``tests/api/test_heap.py`` checks it). Other paths may (a gateway request's exception
and its traceback, say), so that such cycles cannot pile up for good, every
:data:`RECLAIM_EVERY_S` the frozen objects are handed back and freezing pauses until
the collector's next full pass has walked them: one full-size pause (~330 ms at 10,000
workers) every five minutes instead of every few seconds, and no unbounded leak.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

#: How often frozen objects go back to the collector for one full pass (seconds).
RECLAIM_EVERY_S = 300.0


class _Freezer:
    """The gc callback: freezes young-collection survivors, and every
    :data:`RECLAIM_EVERY_S` unfreezes until one full collection has run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.frozen_since = clock()
        self.reclaiming = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop":
            return
        generation = info.get("generation")
        if generation == 2:
            self.reclaiming, self.frozen_since = False, self.clock()
        elif generation == 1 and not self.reclaiming:
            if self.clock() - self.frozen_since >= RECLAIM_EVERY_S:
                self.reclaiming = True
                gc.unfreeze()
            else:
                gc.freeze()


@contextlib.contextmanager
def long_lived_heap() -> Iterator[None]:
    """Freeze the start-up heap and, while open, every young collection's survivors;
    on exit stop doing so and hand the frozen objects back to the collector."""
    # what start-up already discarded is collected first, so that it is not frozen
    gc.collect()
    gc.freeze()
    freezer = _Freezer()
    gc.callbacks.append(freezer)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(freezer)
        gc.unfreeze()
