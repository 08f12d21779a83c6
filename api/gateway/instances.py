"""The engine instances the gateway routes to, and which of them are out of routing.

Instances come from an instance document (``--instances``) and, once registered, from
the service's instance registry; an instance the gateway could not reach is kept out
of routing for ``quarantine_s`` (then tried again: a restarted engine comes back by
itself, a dead one is found dead again at once, by a refused connection).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from engines.instance import EngineInstance

Clock = Callable[[], float]


class InstancePool:
    """Instances by model, with a quarantine for the unreachable ones."""

    def __init__(self, instances: Iterable[EngineInstance] = (), *, quarantine_s: float = 10.0,
                 clock: Clock = time.monotonic) -> None:
        """Start with ``instances``; ``quarantine_s``: how long an unreachable engine is
        left out."""
        self.quarantine_s, self.clock = quarantine_s, clock
        self._by_name: dict[str, EngineInstance] = {}
        self._by_model: dict[str, tuple[EngineInstance, ...]] = {}
        self._out: dict[str, float] = {}
        self.replace(instances)

    def replace(self, instances: Iterable[EngineInstance]) -> None:
        """Route to exactly ``instances`` from now on."""
        self._by_name = {i.name: i for i in instances}
        by_model: dict[str, list[EngineInstance]] = {}
        for instance in self._by_name.values():
            by_model.setdefault(instance.model, []).append(instance)
        self._by_model = {model: tuple(group) for model, group in by_model.items()}

    def put(self, instance: EngineInstance) -> None:
        """Add or replace one instance."""
        self.replace([*(i for i in self._by_name.values() if i.name != instance.name),
                      instance])

    def get(self, name: str) -> EngineInstance:
        """An instance by name (KeyError when unknown)."""
        return self._by_name[name]

    @property
    def models(self) -> list[str]:
        """Models some instance serves, sorted."""
        return sorted(self._by_model)

    def all(self) -> Sequence[EngineInstance]:
        """Every instance."""
        return tuple(self._by_name.values())

    def serving(self, model: str) -> Sequence[EngineInstance]:
        """Instances serving ``model``, quarantined ones included."""
        return self._by_model.get(model, ())

    def routable(self, model: str, exclude: frozenset[str] = frozenset()
                 ) -> tuple[EngineInstance, ...]:
        """Instances of ``model`` in routing now (not quarantined, not excluded)."""
        group = self._by_model.get(model, ())
        if not self._out and not exclude:
            return group
        now = self.clock()
        return tuple(i for i in group if i.name not in exclude
                     and self._out.get(i.name, 0.0) <= now)

    def quarantine(self, name: str) -> None:
        """Leave ``name`` out of routing for ``quarantine_s``."""
        self._out[name] = self.clock() + self.quarantine_s

    def quarantined(self) -> list[str]:
        """Names out of routing now (lapsed entries are dropped)."""
        now = self.clock()
        self._out = {name: until for name, until in self._out.items() if until > now}
        return sorted(self._out)
