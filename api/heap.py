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
(``tests/api/test_heap.py`` checks it); a cycle that does form among frozen objects
stays until the service stops.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    """Freeze what a finished generation-1 collection left (everything it did not free
    is now old: the young generations are empty at this point)."""
    if phase == "stop" and info.get("generation") == 1:
        gc.freeze()


@contextlib.contextmanager
def long_lived_heap() -> Iterator[None]:
    """Freeze the start-up heap and, while open, every young collection's survivors;
    on exit stop doing so and hand the frozen objects back to the collector."""
    # what start-up already discarded is collected first, so that it is not frozen
    gc.collect()
    gc.freeze()
    gc.callbacks.append(_freeze_survivors)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(_freeze_survivors)
        gc.unfreeze()
