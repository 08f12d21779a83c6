"""The service's heap: young-collection survivors are frozen out of full collections,
which is only sound while the worker lifecycle and the route path make no reference
cycles (frozen cycles are never reclaimed)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.heap import _freeze_survivors, long_lived_heap
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
        assert _freeze_survivors in gc.callbacks
        frozen = gc.get_freeze_count()
        survivors = [[i] for i in range(100)]
        gc.collect(1)
        assert gc.get_freeze_count() >= frozen + len(survivors)
    assert _freeze_survivors not in gc.callbacks
    assert gc.get_freeze_count() == 0


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
        assert _freeze_survivors in gc.callbacks  # the app keeps its heap this way
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
