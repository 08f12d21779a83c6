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
    reading = load.model_copy(update={"context": 9000})  # the engines do not report it
    assert registry.workers("tiny-llama", {"e1": reading})[1].context_tokens == 9000
    registry._went_down(registry.live()[1], "refused")
    assert [w.id for w in registry.workers("tiny-llama", {"e1": load})] == ["e0", "e2"]
    registry.remove("e0")
    assert [w.id for w in registry.workers("tiny-llama", {})] == ["e2"]
    assert registry.workers("other-model", {}) == ()


class _Answer:
    """What ``_read_metrics`` reads of an httpx response."""

    def __init__(self, text: str) -> None:
        self.status_code, self.text = 200, text


def test_block_size_is_counted_per_change_and_follows_metrics_at_once() -> None:
    registry = EngineRegistry(lambda event: None, lambda name: None)
    registry.put(instance("e0", role="both", gpus=[0], block_size=16))
    registry.put(instance("e1", role="both", gpus=[1]))
    registry.put(instance("e2", role="both", gpus=[2]))
    assert registry.block_size("tiny-llama") == 16
    counted: list[str | None] = []
    count = registry._count_block_size
    registry._count_block_size = lambda model: counted.append(model) or count(model)  # type: ignore[method-assign]
    assert [registry.block_size("tiny-llama") for _ in range(5)] == [16] * 5
    assert counted == []  # nothing changed: not counted again per route
    metrics = 'vllm:cache_config_info{block_size="32",num_gpu_blocks="100"} 1.0\n'
    for live in registry.live()[1:]:
        registry._read_metrics(live, _Answer(metrics))  # type: ignore[arg-type]
    assert registry.block_size("tiny-llama") == 32  # two engines say 32, before any round ends
    assert counted == ["tiny-llama"]
    assert registry.block_size("other-model") is None
