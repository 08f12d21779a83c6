"""The first route after a worker joins or leaves: what it costs must not grow with the
worker count beyond passes that run in C, and the change must reach the route path.

Work is counted, not timed: the lines of Python executed (a loop over the workers in
Python shows up in proportion to them; a pass in C or numpy does not) and the peak of
memory allocated (an n x n table shows up quadratically).
"""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.routing import Fabric
from api.service import ServiceState
from api.snapshots import Journaled, LiveSnapshots
from policies.profile import resolve_policy
from policies.registry import default_registry
from scheduler.prefix import PrefixIndex
from scheduler.router.router import RouteRequest
from scheduler.state.base import WorkerEntry
from scheduler.state.memory import MemoryStore
from scheduler.state.reservations import MemoryLoads, WorkerLoad
from scheduler.transfer.plan import Lease
from tests.api.service_builders import (
    MOONCAKE_BLOCKS,
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    worker_json,
)
from tests.scheduler.transfer.builders import registration


def _fabric() -> Fabric:
    services = ServiceState(resolve_policy(None, default_registry()), PrefixIndex(),
                            cluster(hosts=4))
    assert services.fabric is not None
    return services.fabric


def _entry(name: str, gpu: str, role: str) -> WorkerEntry:
    reg = registration(name, gpus=[gpu]).model_copy(update={"role": role})
    return WorkerEntry.model_construct(registration=reg, free_blocks=4096, lease=Lease(
        worker=name, epoch=1, ttl_s=10, expires_at=1e12))


@contextmanager
def _counting() -> Iterator[dict[str, int]]:
    """Lines of Python executed and peak bytes allocated inside the block."""
    counts = {"lines": 0, "peak": 0}

    def tracer(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        if event == "line":
            counts["lines"] += 1
        return tracer

    tracemalloc.start()
    sys.settrace(tracer)
    try:
        yield counts
    finally:
        sys.settrace(None)
        counts["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _first_routes(workers: int) -> list[dict[str, int]]:
    """Work of the first route after a worker joins, then after one leaves, with
    ``workers`` workers (alternately prefill and decode; they share the GPUs)."""
    fabric = _fabric()
    gpus = sorted(fabric.known)
    entries = [_entry(f"w{i:06d}", gpus[i % len(gpus)], "prefill" if i % 2 else "decode")
               for i in range(workers)]
    loads = {e.registration.name: WorkerLoad(tokens=0, requests=0, max_tokens=10**9,
                                             max_requests=256) for e in entries}
    live = LiveSnapshots()
    request = RouteRequest(block_hashes=list(range(1, 41)), model=None)

    def route() -> None:
        snapshot = live.snapshot(fabric, entries, loads, None, kv_bytes=10, pairings=())
        fabric.router.route(request, snapshot)

    route()
    route()  # fabric rows of the usual candidates are warm, as in a running service
    work = []
    for change in ("join", "leave"):
        if change == "join":
            entries.insert(workers // 2, _entry("w-joined", gpus[3], "decode"))
        else:
            del entries[workers // 3]
        with _counting() as counts:
            route()
        work.append(counts)
    return work


def test_the_first_route_after_a_join_or_leave_does_no_per_worker_python_work() -> None:
    small, large = _first_routes(1000), _first_routes(4000)
    for few, many in zip(small, large, strict=True):
        # the same Python whatever the size; passes over the workers run in C
        assert many["lines"] <= few["lines"] * 1.05 + 20, (few, many)
        # memory linear in workers (4x the workers: ~4x; an n x n table would be 16x)
        assert many["peak"] <= few["peak"] * 6, (few, many)


@pytest.fixture
def merges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the listing merges (full rebuilds) of every live snapshot cache."""
    calls: list[int] = []
    merge = LiveSnapshots._merge

    def counting(*args: Any) -> None:
        calls.append(1)
        merge(*args)

    monkeypatch.setattr(LiveSnapshots, "_merge", staticmethod(counting))
    return calls


def test_joins_and_leaves_reach_the_route_path_without_a_rebuild(merges: list[int]) -> None:
    spec = cluster(hosts=2)
    h0, h1 = (h.name for h in spec.hosts[:2])
    body = {"block_hashes": [11, 12, 13], "model": "llama-3-70b"}
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as client:
        load_cluster(client, spec)
        headers = bearer(WORKER)
        for name, role, gpu in (("prefill-0", "prefill", f"{h0}/gpu0"),
                                ("decode-0", "decode", f"{h1}/gpu0")):
            assert client.post("/v1/workers", json=worker_json(name, role, [gpu]),
                               headers=headers).status_code == 201

        def decode_worker() -> str | int:
            answer = client.post("/v1/route", json=body, headers=headers)
            if answer.status_code != 200:
                return answer.status_code
            return str(answer.json()["decision"]["decode"]["worker"])

        assert decode_worker() == "decode-0"
        assert merges == [1]  # the first listing
        assert client.delete("/v1/workers/decode-0", headers=bearer()).status_code == 204
        assert decode_worker() == 503  # the leave reached the router: no decode worker
        assert client.post("/v1/workers", json=worker_json("decode-1", "decode",
                                                           [f"{h1}/gpu1"]),
                           headers=headers).status_code == 201
        assert decode_worker() == "decode-1"
        assert merges == [1]  # both changes spliced in


async def _journaled_routes(workers: int) -> list[dict[str, int]]:
    """Work of a route after a load change, after a join and after a leave, with
    ``workers`` workers in the in-memory stores (read through their journals)."""
    fabric = _fabric()
    gpus = sorted(fabric.known)
    store, loads = MemoryStore(), MemoryLoads()
    for i in range(workers):
        entry = _entry(f"w{i:06d}", gpus[i % len(gpus)], "prefill" if i % 2 else "decode")
        await store.register_worker(entry.registration, ttl_s=3600)
        await loads.set_capacity(entry.registration.name, 10**9, 256)
    journaled, live = Journaled(store, loads), LiveSnapshots()
    request = RouteRequest(block_hashes=list(range(1, 41)), model=None)

    async def route() -> None:
        snapshot = await live.current(fabric, (), loads.live(), None, kv_bytes=10,
                                      pairings=(), journaled=journaled)
        fabric.router.route(request, snapshot)

    await route()
    await route()

    async def no_listing() -> list[WorkerEntry]:
        raise AssertionError("a route read the listing of every worker")

    store.list_workers = no_listing  # type: ignore[method-assign]
    work = []
    for change in ("load", "join", "leave"):
        if change == "load":
            await loads.reserve_all([("w000003", 100, 1)])
            await store.take_blocks({"w000004": 2})
        elif change == "join":
            joined = _entry("w-joined", gpus[3], "decode")
            await store.register_worker(joined.registration, ttl_s=3600)
        else:
            await store.remove_worker(f"w{workers // 3:06d}")
        with _counting() as counts:
            await route()
        work.append(counts)
    return work


def test_routes_over_journaled_stores_do_no_per_worker_python_work() -> None:
    small, large = asyncio.run(_journaled_routes(1000)), asyncio.run(_journaled_routes(4000))
    for few, many in zip(small, large, strict=True):
        assert many["lines"] <= few["lines"] * 1.05 + 20, (few, many)
        assert many["peak"] <= few["peak"] * 6, (few, many)
