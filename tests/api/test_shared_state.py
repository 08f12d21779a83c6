"""Two replicas' service states over one set of shared documents (in memory, one loop).

The memory documents never yield inside a call, but the service builds fabrics in
worker threads (``asyncio.to_thread``), so which replica writes first depends on
thread scheduling. Tests that assert an order force it with :class:`WatchedDocs`
hooks (one replica's write waits for the other's) instead of hoping for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from api.feeds import FeedKind, Feeds, parse_capture, parse_inventory
from api.placement_jobs import CurrentPlacement, PlacementTarget
from api.service import PLACEMENT, TOPOLOGY, ServiceState
from policies.profile import resolve_policy
from policies.registry import default_registry
from scheduler.prefix import PrefixIndex
from scheduler.state.docs import MemoryDocs, SharedDocs
from tests.api.service_builders import cluster, fewer_gpus, inventory_yaml, target
from topology.spec import FabricSpec, HostSpec
from topology.writers import lldp_json0, nvsmi_text


class WatchedDocs:
    """Shared documents seen through one replica: counts lost writes, and can run a
    hook just before that replica's next write of a document."""

    def __init__(self, inner: SharedDocs) -> None:
        self.inner = inner
        self.lost = 0
        self.before_put: dict[str, Callable[[], Awaitable[None]]] = {}
        #: Set by every write that landed.
        self.wrote = asyncio.Event()

    async def get(self, name: str) -> tuple[int, str] | None:
        return await self.inner.get(name)

    async def get_many(self, names: Sequence[str]) -> dict[str, tuple[int, str]]:
        return await self.inner.get_many(names)

    async def put(self, name: str, text: str, expected_version: int) -> int | None:
        hook = self.before_put.pop(name, None)
        if hook is not None:
            await hook()
        version = await self.inner.put(name, text, expected_version)
        self.lost += version is None
        if version is not None:
            self.wrote.set()
        return version

    async def delete(self, name: str) -> bool:
        return await self.inner.delete(name)

    async def versions(self, names: Sequence[str]) -> dict[str, int]:
        return await self.inner.versions(names)


def replica(docs: SharedDocs, spec: FabricSpec | None = None) -> ServiceState:
    """One replica's service state on ``docs``."""
    return ServiceState(resolve_policy(None, default_registry()), PrefixIndex(), spec,
                        docs=docs, poll_s=0.05)


def capture(host: str, kind: FeedKind, text: str) -> Callable[[Feeds], Feeds | None]:
    """The edit of one posted capture (as the topology router makes it)."""
    parsed = parse_capture(kind, text, "test")
    return lambda feeds: None if feeds.same_as_posted(host, kind, text) else \
        feeds.with_capture(host, kind, parsed)


async def load(services: ServiceState, spec: FabricSpec) -> None:
    """Every host's captures, then the inventory."""
    for host in spec.hosts:
        await services.update_feeds(capture(host.name, "nvsmi", nvsmi_text(host)))
        await services.update_feeds(capture(host.name, "lldp", lldp_json0(host)))
    text = inventory_yaml(spec)
    inventory = parse_inventory(text, "test")
    await services.update_feeds(lambda feeds: feeds.with_inventory(inventory, text))


def moved_lldp(host: HostSpec) -> str:
    """``host``'s LLDP with its first NIC on the next rail leaf, on a port of its own
    (rail1's port for this host is NIC1's; two NICs on one port are mis-cabling)."""
    return (lldp_json0(host).replace('"z0-p0-rail0"', '"z0-p0-rail1"')
            .replace('"value": "Ethernet', '"value": "Ethernet9', 1))


def nic_leaf(spec: FabricSpec, host: str, nic: str = "mlx5_0") -> str | None:
    """The leaf of ``host``'s ``nic`` in ``spec``."""
    return next(n.leaf for h in spec.hosts if h.name == host for n in h.nics if n.device == nic)


def go(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``body`` in a fresh event loop."""
    asyncio.run(body())


async def solved(services: ServiceState, **overrides: Any) -> CurrentPlacement:
    """Solve on ``services`` and wait for the result to be in force."""
    await services.start_solve(PlacementTarget.model_validate(target(**overrides)))
    await services.settle()
    assert services.current is not None
    return services.current


def test_a_replica_serves_what_another_wrote_after_a_refresh() -> None:
    async def body() -> None:
        spec, docs = cluster(), MemoryDocs()
        a, b = replica(docs), replica(docs)
        await load(a, spec)
        assert b.fabric is None
        await b.refresh()
        assert b.fabric is not None and a.fabric is not None
        assert b.fabric.spec == a.fabric.spec
        assert b.feeds.inventory_text == a.feeds.inventory_text
        fabric = b.fabric
        await b.refresh()
        assert b.fabric is fabric, "nothing changed: the fabric (and its router) is kept"
    go(body)


def test_racing_edits_on_two_replicas_keep_both() -> None:
    async def body() -> None:
        spec, shared = cluster(), MemoryDocs()
        first = WatchedDocs(shared)
        a, b = replica(first), replica(watched := WatchedDocs(shared))
        await load(a, spec)
        h1, h2 = spec.hosts[1], spec.hosts[2]
        # Both read the same version before either writes (neither yields before its
        # build thread); b's write then waits for a's, whichever build ends first.
        first.wrote.clear()
        watched.before_put[TOPOLOGY] = first.wrote.wait
        await asyncio.gather(
            a.update_feeds(capture(h1.name, "lldp", moved_lldp(h1))),
            b.update_feeds(capture(h2.name, "nvsmi", nvsmi_text(fewer_gpus(h2)))))
        assert watched.lost == 1, "b wrote on a stale copy once, then re-applied its edit"
        await a.refresh()
        for services in (a, b):
            assert services.fabric is not None
            assert nic_leaf(services.fabric.spec, h1.name) == "z0-p0-rail1"
            assert f"{h2.name}/gpu7" not in services.fabric.known
    go(body)


def test_a_re_posted_capture_on_a_stale_replica_writes_nothing() -> None:
    async def body() -> None:
        spec, shared = cluster(), MemoryDocs()
        a, b = replica(shared), replica(shared)
        await load(a, spec)
        host = spec.hosts[0]
        version = (await shared.versions([TOPOLOGY]))[TOPOLOGY]
        change, job = await b.update_feeds(capture(host.name, "lldp", lldp_json0(host)))
        assert not change.changed and job is None
        assert (await shared.versions([TOPOLOGY]))[TOPOLOGY] == version
        assert b.fabric is not None, "b read the latest feeds to see the re-post"
    go(body)


def test_the_start_up_fabric_is_shared_only_when_the_store_has_none() -> None:
    async def body() -> None:
        shared = MemoryDocs()
        first, second = cluster(hosts=2), cluster(hosts=3)
        a = replica(shared, first)
        await a.start()
        b = replica(shared, second)
        await b.start()
        assert b.fabric is not None and b.fabric.spec == first
        assert len(b.fabric.spec.hosts) == 2
    go(body)


def test_a_broken_placement_is_re_solved_by_the_replica_that_broke_it() -> None:
    async def body() -> None:
        spec, shared = cluster(), MemoryDocs()
        a, b = replica(shared), replica(shared)
        await load(a, spec)
        placed = await solved(a)
        await b.refresh()
        assert b.current == placed
        victim = _host_of_a_used_gpu7(placed, spec)
        change, job_id = await b.update_feeds(
            capture(victim.name, "nvsmi", nvsmi_text(fewer_gpus(victim))))
        assert change.changed and job_id is not None
        await a.refresh()
        assert not [j for j in a.jobs.book.all() if j.kind == "re-solve"], \
            "a follows the change; only b re-checks"
        await b.settle()
        job = await a.jobs.get(job_id)
        assert job is not None and job.status == "done" and job.kind == "re-solve"
        await a.refresh()
        assert a.current is not None and a.current.origin == "re-solve"
    go(body)


def test_a_placement_written_while_another_replica_changes_the_fabric_is_rechecked() -> None:
    """a checks a placement on fabric F1; b writes F2 (taking GPUs the placement uses)
    before a's write lands; b saw no placement to re-check, so a must."""
    async def body() -> None:
        spec, shared = cluster(), MemoryDocs()
        a, b = replica(watched := WatchedDocs(shared)), replica(shared)
        await load(a, spec)
        placed = await solved(a)
        await shared.delete(PLACEMENT)  # as if no placement were in force yet
        a.current, b.current = None, None
        victim = _host_of_a_used_gpu7(placed, spec)

        async def b_breaks_it() -> None:
            await b.update_feeds(capture(victim.name, "nvsmi", nvsmi_text(fewer_gpus(victim))))

        watched.before_put[PLACEMENT] = b_breaks_it
        await a.apply_placement(placed.placement, placed.target, "test")
        rechecks = [j for j in a.jobs.book.all() if j.kind == "re-solve"]
        assert len(rechecks) == 1 and f"{victim.name}/gpu7" in (rechecks[0].reason or "")
        await a.settle()
        assert a.current is not None and a.current.origin == "re-solve"
    go(body)


def test_job_ids_are_shared_and_jobs_listed_on_every_replica() -> None:
    async def body() -> None:
        spec, shared = cluster(), MemoryDocs()
        a, b = replica(shared), replica(shared)
        await load(a, spec)
        await b.refresh()
        tight = PlacementTarget.model_validate(target(prefill=6, decode=6))
        first = await a.start_solve(tight)
        second = await b.start_solve(tight)
        assert (first.id, second.id) == ("place-1", "place-2")
        await asyncio.gather(a.settle(), b.settle())
        for services in (a, b):
            jobs = await services.jobs.all()
            assert [j.id for j in jobs] == ["place-1", "place-2"]
            assert all(j.status == "failed" and j.error for j in jobs)
        assert await b.jobs.get("place-999") is None and await b.jobs.get("nonsense") is None
    go(body)


def _host_of_a_used_gpu7(placed: CurrentPlacement, spec: FabricSpec) -> HostSpec:
    used = {g for i in placed.placement.instances for g in i.gpus}
    return next(h for h in spec.hosts if f"{h.name}/gpu7" in used)
