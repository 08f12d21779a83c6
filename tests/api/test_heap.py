"""The service's heap: young-collection survivors are frozen out of full collections,
which is only sound while the worker lifecycle and the route path make no reference
cycles (frozen cycles are never reclaimed)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.heap import RECLAIM_EVERY_S, _Freezer, long_lived_heap
from tests.api.service_builders import (
    MOONCAKE_BLOCKS,
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    own_bearer,
    worker_json,
)

PROJECT = ("api", "scheduler", "policies", "topology", "engines")


def test_young_collection_survivors_are_frozen_until_the_heap_is_closed() -> None:
    with long_lived_heap():
        assert any(isinstance(c, _Freezer) for c in gc.callbacks)
        frozen = gc.get_freeze_count()
        survivors = [[i] for i in range(100)]
        gc.collect(1)
        assert gc.get_freeze_count() >= frozen + len(survivors)
    assert not any(isinstance(c, _Freezer) for c in gc.callbacks)
    assert gc.get_freeze_count() == 0


def test_frozen_cycles_are_reclaimed_by_one_full_pass_every_period() -> None:
    """A cycle frozen while alive is freed once the period has passed: the freezer
    hands the frozen objects back and freezes again only after a full collection."""
    now = [0.0]
    freezer = _Freezer(clock=lambda: now[0])
    gc.collect()
    gc.callbacks.append(freezer)
    try:
        cycle: list[object] = []
        cycle.append(cycle)
        probe = weakref_to(cycle)
        gc.collect(1)
        assert gc.get_freeze_count() > 0  # the live cycle is frozen
        del cycle
        gc.collect(1)
        assert probe() is not None  # frozen: young passes do not see it
        now[0] = RECLAIM_EVERY_S
        gc.collect(1)  # the period is over: handed back, freezing paused
        assert freezer.reclaiming and gc.get_freeze_count() == 0
        gc.collect()  # the next full pass reclaims it and freezing resumes
        assert probe() is None and not freezer.reclaiming
    finally:
        gc.callbacks.remove(freezer)
        gc.unfreeze()


def weakref_to(thing: list[object]) -> Callable[[], object]:
    """A weak reference to a list (lists take none: through a holder object)."""
    holder = _Holder(thing)
    thing.append(holder)
    return weakref.ref(holder)


class _Holder:
    def __init__(self, thing: object) -> None:
        self.thing = thing


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """The collector paused (nothing collected behind the test's back); what the test's
    final collection finds unreachable is kept in the list for inspection."""
    enabled = gc.isenabled()
    gc.disable()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


def _ours(thing: object) -> bool:
    """Whether an unreachable object was made by the service's code (not the client's)."""
    code = getattr(thing, "f_code", None) or getattr(thing, "cr_code", None) \
        or getattr(thing, "__code__", None)
    if code is not None:
        return any(f"/{package}/" in code.co_filename for package in PROJECT)
    return type(thing).__module__.split(".")[0] in PROJECT


def test_the_worker_lifecycle_and_routes_make_no_reference_cycles(
        saved_garbage: list[object]) -> None:
    spec = cluster(hosts=2)
    gpus = [f"{host.name}/gpu{i}" for host in spec.hosts for i in range(8)]
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as client:
        assert any(isinstance(c, _Freezer) for c in gc.callbacks)  # the app keeps its heap so
        load_cluster(client, spec)
        gc.collect()
        saved_garbage.clear()  # start-up's own, before any worker
        headers = bearer(WORKER)
        statuses = []
        for i, gpu in enumerate(gpus):
            statuses.append(client.post("/v1/workers", json=worker_json(
                f"w{i}", "prefill" if i % 2 else "decode", [gpu]), headers=headers).status_code)
        for i in range(12):
            statuses += [client.post("/v1/route", json={
                "block_hashes": [i, i + 1, i + 2], "model": "llama-3-70b"},
                headers=headers).status_code, client.post(
                f"/v1/workers/w{i}/heartbeat", headers=own_bearer(f"w{i}")).status_code]
            statuses.append(client.post("/v1/route", json={"model": "llama-3-70b"},
                                        headers=headers).status_code)
        for i in range(0, 16, 3):
            statuses += [client.delete(f"/v1/workers/w{i}", headers=bearer()).status_code,
                         client.post("/v1/route", json={"block_hashes": [5], "model":
                                                        "llama-3-70b"},
                                     headers=headers).status_code]
        gc.collect()
        ours = [thing for thing in saved_garbage if _ours(thing)]
    assert sorted(set(statuses)) == [200, 201, 204, 422]
    assert not ours, ours[:10]
