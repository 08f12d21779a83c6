"""The registry's route-path view: kept per model, patched per reservation, rebuilt on change."""

from __future__ import annotations

from engines.registry import EngineRegistry
from scheduler.state.reservations import WorkerLoad
from tests.engines.builders import instance


def _up(registry: EngineRegistry) -> None:
    for live in registry.live():
        live.up, live.last_ok = True, registry.clock()
    registry._changed()


def test_workers_follow_reservations_health_and_the_instance_set() -> None:
    registry = EngineRegistry(lambda event: None, lambda name: None)
    for i in range(3):
        registry.put(instance(f"e{i}", role="both", gpus=[i]))
    assert registry.workers("tiny-llama", {}) == ()  # none answered /health yet
    _up(registry)
    first = registry.workers("tiny-llama", {})
    assert [w.id for w in first] == ["e0", "e1", "e2"]
    load = WorkerLoad(tokens=700, requests=3, max_tokens=10**6, max_requests=256)
    second = registry.workers("tiny-llama", {"e1": load})
    assert second[0] is first[0] and second[2] is first[2]  # untouched: same objects
    assert (second[1].running_requests, second[1].queued_tokens) == (3, 700)
    registry._went_down(registry.live()[1], "refused")
    assert [w.id for w in registry.workers("tiny-llama", {"e1": load})] == ["e0", "e2"]
    registry.remove("e0")
    assert [w.id for w in registry.workers("tiny-llama", {})] == ["e2"]
    assert registry.workers("other-model", {}) == ()
