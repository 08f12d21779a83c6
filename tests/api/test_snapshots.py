"""Live snapshots: patched between requests, always equal to a snapshot built from scratch."""

from __future__ import annotations

import asyncio
import random
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.routing import Fabric
from api.service import ServiceState
from api.snapshots import THREAD_REBUILD_FROM, Journaled, LiveSnapshots
from policies.profile import resolve_policy
from policies.registry import default_registry
from policies.snapshot import Role, Snapshot, Worker
from scheduler.prefix import PrefixIndex
from scheduler.state.base import WorkerEntry
from scheduler.state.memory import MemoryStore
from scheduler.state.reservations import LoadItem, MemoryLoads, WorkerLoad
from scheduler.transfer.plan import Lease
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
from tests.scheduler.transfer.builders import registration

ARRAYS = ("queued", "running", "max_running", "free_kv", "capacity_kv", "promised_kv",
          "prefill_rate", "prefill_mask", "decode_mask")


def _fabric() -> Fabric:
    services = ServiceState(resolve_policy(None, default_registry()), PrefixIndex(),
                            cluster(hosts=2))
    assert services.fabric is not None
    return services.fabric


def _entries(fabric: Fabric, count: int = 8) -> list[WorkerEntry]:
    gpus = sorted(fabric.known)
    return [WorkerEntry(registration=registration(f"w{i}", gpus=[gpus[i]]).model_copy(
        update={"role": "prefill" if i % 2 else "decode", "model": "m" if i % 3 else None}),
        lease=Lease(worker=f"w{i}", epoch=1, ttl_s=10, expires_at=1e12), free_blocks=100)
        for i in range(count)]


def _load(tokens: int = 0, requests: int = 0) -> WorkerLoad:
    return WorkerLoad(tokens=tokens, requests=requests, max_tokens=10**6, max_requests=64)


def _same(a: Snapshot, b: Snapshot) -> None:
    for name in ("workers", "position", "preferred_pairs", "partners", "link_load",
                 "block_tokens", "kv_bytes_per_token"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.domains.keys() == b.domains.keys()
    for level, ids in a.domains.items():
        np.testing.assert_array_equal(ids, b.domains[level])
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not getattr(a, name).flags.writeable


def _routes_none_draining(snapshot: Snapshot, entries: list[WorkerEntry]) -> None:
    draining = {e.registration.name for e in entries if e.draining}
    assert draining.isdisjoint(snapshot.position), draining & snapshot.position.keys()


def _fresh(fabric: Fabric, entries: list[WorkerEntry], loads: dict[str, WorkerLoad],
           model: str | None) -> Snapshot:
    return LiveSnapshots().snapshot(fabric, entries, loads, model, kv_bytes=10, pairings=())


def test_patched_snapshots_equal_fresh_ones_through_random_load_changes() -> None:
    fabric, rng = _fabric(), random.Random(3)
    entries = _entries(fabric)
    loads = {e.registration.name: _load() for e in entries}
    live = LiveSnapshots()
    first = live.snapshot(fabric, entries, loads, "m", kv_bytes=10, pairings=())
    for _ in range(200):
        i = rng.randrange(len(entries))
        if rng.random() < 0.5:
            entries[i] = entries[i].model_copy(update={"free_blocks": rng.randrange(100)})
        else:
            loads[entries[i].registration.name] = _load(rng.randrange(5000), rng.randrange(9))
        got = live.snapshot(fabric, entries, loads, "m", kv_bytes=10, pairings=())
        _same(got, _fresh(fabric, entries, loads, "m"))
        assert got.domains is first.domains  # locality arrays are never rebuilt for loads


def test_unchanged_state_returns_the_same_snapshot() -> None:
    fabric = _fabric()
    entries = _entries(fabric)
    live = LiveSnapshots()
    first = live.snapshot(fabric, entries, {}, None, kv_bytes=10, pairings=())
    assert live.snapshot(fabric, list(entries), {}, None, kv_bytes=10, pairings=()) is first


def test_a_worker_set_change_rebuilds() -> None:
    fabric = _fabric()
    entries = _entries(fabric)
    live = LiveSnapshots()
    live.snapshot(fabric, entries, {}, None, kv_bytes=10, pairings=())
    gone = entries[1:]
    _same(live.snapshot(fabric, gone, {}, None, kv_bytes=10, pairings=()),
          _fresh(fabric, gone, {}, None))
    swapped = [*gone[:2], _entries(fabric, 9)[8], *gone[3:]]  # same length, other worker
    _same(live.snapshot(fabric, swapped, {}, None, kv_bytes=10, pairings=()),
          _fresh(fabric, swapped, {}, None))


def test_models_are_kept_apart_and_unroutable_workers_left_out() -> None:
    fabric = _fabric()
    entries = _entries(fabric)
    off_fabric = entries[0].model_copy(update={"registration": registration(
        "stray", gpus=["nowhere/gpu0"])})
    live = LiveSnapshots()
    for_m = live.snapshot(fabric, [*entries, off_fabric], {}, "m", kv_bytes=10, pairings=())
    for_x = live.snapshot(fabric, [*entries, off_fabric], {}, "x", kv_bytes=10, pairings=())
    assert {w.id for w in for_m.workers} == {e.registration.name for e in entries}
    assert {w.id for w in for_x.workers} == {"w0", "w3", "w6"}  # model None serves all


def test_updated_refuses_a_worker_that_is_not_the_same_worker() -> None:
    snapshot = Snapshot((Worker("a", Role.PREFILL, ("g0",)),))
    with pytest.raises(ValueError, match="changed identity"):
        snapshot.updated({0: Worker("b", Role.PREFILL, ("g0",))})
    patched = snapshot.updated({0: Worker("a", Role.PREFILL, ("g0",), queued_tokens=7)})
    assert patched.queued.tolist() == [7] and snapshot.queued.tolist() == [0]



def test_joins_leaves_and_re_registrations_merge_into_fresh_equal_snapshots() -> None:
    fabric, rng = _fabric(), random.Random(5)
    pool = _entries(fabric, 16)
    entries = pool[:8]
    loads = {e.registration.name: _load() for e in pool}
    live = LiveSnapshots()
    live.snapshot(fabric, entries, loads, "m", kv_bytes=10, pairings=())
    for _ in range(150):
        roll = rng.random()
        if roll < 0.3 and len(entries) > 1:
            leaving = rng.choice(entries)
            entries = [e for e in entries if e is not leaving]
        elif roll < 0.6:
            joining = rng.choice([e for e in pool if e not in entries] or pool)
            entries = sorted({e.registration.name: e for e in [*entries, joining]}.values(),
                             key=lambda e: e.registration.name)
        elif roll < 0.7:  # starts draining, or registers again (no longer draining)
            i = rng.randrange(len(entries))
            entries[i] = entries[i].model_copy(update={"draining": not entries[i].draining})
        elif roll < 0.8:  # re-registered with other GPUs or role
            i = rng.randrange(len(entries))
            reg = entries[i].registration.model_copy(update={
                "role": rng.choice(["prefill", "decode", "both"]),
                "gpus": (sorted(fabric.known)[rng.randrange(16)],)})
            entries = [*entries[:i], entries[i].model_copy(update={"registration": reg}),
                       *entries[i + 1:]]
        else:
            name = rng.choice(entries).registration.name
            loads[name] = _load(rng.randrange(5000), rng.randrange(9))
        got = live.snapshot(fabric, entries, loads, "m", kv_bytes=10, pairings=())
        _same(got, _fresh(fabric, entries, loads, "m"))
        _routes_none_draining(got, entries)


def test_the_service_path_rebuilds_large_listings_off_the_event_loop() -> None:
    fabric = _fabric()
    gpus = sorted(fabric.known)
    template = _entries(fabric, 1)[0]
    entries = [template.model_copy(update={"registration": template.registration.model_copy(
        update={"name": f"w{i:05d}", "gpus": (gpus[i % len(gpus)],)})})
        for i in range(THREAD_REBUILD_FROM + 10)]
    live, seen_threads = LiveSnapshots(), set()
    rebuild = live._rebuild

    def spying(*args: object) -> None:
        seen_threads.add(threading.get_ident())
        rebuild(*args)  # type: ignore[arg-type]

    live._rebuild = spying  # type: ignore[method-assign]
    got = asyncio.run(live.current(fabric, entries, {}, None, kv_bytes=10, pairings=()))
    _same(got, _fresh(fabric, entries, {}, None))
    assert seen_threads and threading.get_ident() not in seen_threads


def _pairing(prefill: str, decode: str) -> SimpleNamespace:
    return SimpleNamespace(prefill=prefill, decode=decode, weight=0.5)


def test_a_join_or_leave_is_spliced_in_equal_to_a_fresh_snapshot_without_a_merge() -> None:
    fabric, rng = _fabric(), random.Random(11)
    pool = _entries(fabric, 16)
    pool[9] = pool[9].model_copy(update={"registration": pool[9].registration.model_copy(
        update={"block_tokens": 32})})  # joining or leaving changes the block size
    pairings = [_pairing(f"w{i}", f"w{j}") for i in range(16) for j in range(16) if i != j]
    entries, loads = pool[:8], {e.registration.name: _load() for e in pool}
    live, merges = LiveSnapshots(), []
    before = live.snapshot(fabric, entries, loads, None, kv_bytes=10, pairings=pairings)
    merge = live._merge
    live._merge = lambda *args: (merges.append(1), merge(*args))  # type: ignore[method-assign]
    for _ in range(120):
        if (rng.random() < 0.5 or len(entries) == len(pool)) and len(entries) > 1:
            leaving = rng.choice(entries)
            entries = [e for e in entries if e is not leaving]
        else:
            listed = {e.registration.name for e in entries}  # (one entry per name)
            joining = rng.choice([e for e in pool if e.registration.name not in listed])
            entries = sorted([*entries, joining], key=lambda e: e.registration.name)
        for i in rng.sample(range(len(entries)), min(2, len(entries))):  # loads move too
            entries[i] = entries[i].model_copy(update={"free_blocks": rng.randrange(100)})
        if rng.random() < 0.3:  # a worker starts draining, or registers again
            i = rng.randrange(len(entries))
            entries[i] = entries[i].model_copy(update={"draining": not entries[i].draining})
        got = live.snapshot(fabric, entries, loads, None, kv_bytes=10, pairings=pairings)
        fresh = LiveSnapshots().snapshot(fabric, entries, loads, None, kv_bytes=10,
                                         pairings=pairings)
        _same(got, fresh)
        _routes_none_draining(got, entries)
        # spliced, unless the block size changed (then rebuilt from the kept workers)
        assert got.origin is not None or got.block_tokens != before.block_tokens
        before = got
    assert not merges


def test_a_spliced_snapshot_drops_the_pairings_of_a_removed_worker() -> None:
    workers = (Worker("a", Role.PREFILL, ("g0",)), Worker("b", Role.DECODE, ("g1",)),
               Worker("c", Role.DECODE, ("g2",)))
    pairs = {("a", "b"): 1.0, ("a", "c"): 0.5}
    whole = Snapshot(workers, preferred_pairs=pairs)
    spliced = whole.spliced(1, 1, (), {})
    _same(spliced, Snapshot(workers[::2], preferred_pairs={("a", "c"): 0.5}))
    assert spliced.origin is not None and spliced.origin.parent is whole.position


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _journaled_steps(steps: int, seed: int) -> tuple[int, int]:
    """Random changes to real in-memory stores; after each, the snapshot caught up from
    the journals must equal one built from the full listing. Returns (steps caught up
    from the journals, full reads)."""
    fabric, rng, clock = _fabric(), random.Random(seed), _Clock()
    store, loads = MemoryStore(clock=clock), MemoryLoads(clock=clock)
    journaled = Journaled(store, loads)
    gpus = sorted(fabric.known)
    names = [f"w{i:02d}" for i in range(24)]
    pairings = [_pairing(names[i], names[i + 1]) for i in range(0, 24, 2)]

    async def register(name: str) -> None:
        i = names.index(name)
        reg = registration(name, gpus=[gpus[i % len(gpus)]]).model_copy(update={
            "role": rng.choice(("prefill", "decode", "both")),
            "model": rng.choice(("m", None, "other"))})
        await store.register_worker(reg, ttl_s=rng.choice((5.0, 1000.0)))
        await loads.set_capacity(name, 10**6, 64)

    for name in names[:12]:
        await register(name)
    live, fallbacks = LiveSnapshots(), []
    read = live._merge
    live._merge = lambda *args: (fallbacks.append(1), read(*args))  # type: ignore[method-assign]
    open_ids: list[str] = []
    for step in range(steps):
        name = rng.choice(names)
        registered = await store.get_worker(name) if store.entry(name) else None
        action = rng.random()
        if action < 0.15 or registered is None:
            await register(name)  # joins, or registers again (a new epoch)
        elif action < 0.25:
            await store.remove_worker(name)
            await loads.drop_load(name)
        elif action < 0.4 and not registered.draining:
            await store.take_blocks({name: rng.randrange(3)})
        elif action < 0.5:
            await store.release_blocks(name, [0, 1])
        elif action < 0.65:
            rid = f"r{step}"
            await loads.open_reservation(rid, "me", [LoadItem(
                worker=name, tokens=rng.randrange(500), requests=1, blocks=rng.randrange(4))],
                ttl_s=100)
            open_ids.append(rid)
        elif action < 0.75 and open_ids:
            await loads.close_reservation(open_ids.pop(rng.randrange(len(open_ids))))
        elif action < 0.8:
            await store.drain_worker(name)  # out of routing until it registers again
        elif action < 0.85:
            await store.heartbeat(name)
        elif action < 0.87:
            clock.now += 3.0  # short leases lapse: they leave the listing
        else:
            for other in rng.sample(names, 6):  # several changes at once
                await register(other)
        wanted = rng.choice(("m", None))
        pairs = pairings if step % 50 else []
        got = await live.current(fabric, (), loads.live(), wanted, kv_bytes=10,
                                 pairings=pairs, journaled=journaled)
        entries, by_name = await store.list_with_loads(loads)
        fresh = LiveSnapshots().snapshot(fabric, entries, by_name, wanted, kv_bytes=10,
                                         pairings=pairs)
        _same(got, fresh)
        _routes_none_draining(got, entries)
    return steps - len(fallbacks), len(fallbacks)


def test_snapshots_caught_up_from_the_journals_equal_ones_built_from_the_listing() -> None:
    for seed in range(4):
        journal, full = asyncio.run(_journaled_steps(300, seed))
        # the full listing is read only when the journals cannot say (first use, a
        # lapsed lease, other pairings, another model's view behind): not most steps
        assert journal > 2 * full, (journal, full)


def test_the_route_endpoint_reads_the_workers_by_name_not_the_whole_listing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    listings: list[int] = []
    listing = MemoryStore.list_workers

    async def counted(self: MemoryStore) -> list[WorkerEntry]:
        listings.append(1)
        return await listing(self)

    monkeypatch.setattr(MemoryStore, "list_workers", counted)
    spec = cluster(hosts=2)
    with TestClient(make_app(settings=MOONCAKE_BLOCKS)) as client:
        load_cluster(client, spec)
        gpus = spec.gpu_names()
        for i in range(8):
            client.post("/v1/workers", headers=bearer(WORKER), json=worker_json(
                f"w{i}", "prefill" if i % 2 else "decode", [gpus[i]]))
        decisions = []
        for i in range(12):
            if i == 6:  # a decode worker joins, the others leave: taken from the journals
                client.post("/v1/workers", headers=bearer(WORKER),
                            json=worker_json("late", "decode", [gpus[9]]))
                for gone in ("w0", "w2", "w4", "w6"):
                    assert client.delete(f"/v1/workers/{gone}",
                                         headers=own_bearer(gone)).status_code == 204
            answer = client.post("/v1/route", headers=bearer(), json={
                "block_hashes": [1, 2, 3], "model": "llama-3-70b", "request_id": f"r{i}"})
            assert answer.status_code == 200, answer.text
            decisions.append(answer.json()["decision"]["decode"]["worker"])
        assert listings == [1]  # the first route read the listing; the rest caught up
        assert set(decisions[6:]) == {"late"} and "late" not in decisions[:6]
