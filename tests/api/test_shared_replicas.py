"""Two replicas (whole apps, lifespans included) sharing one private redis-server: the
topology, the placement and placement jobs written through one are served by the other.

A load balancer may send an operator's requests to any replica; these tests write
through replica A and read through replica B (or the reverse) with no sticky session.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    fewer_gpus,
    load_cluster,
    make_app,
    target,
    worker_json,
)
from tests.servers import RedisServer, redis_server
from topology.writers import lldp_json0, nvsmi_text

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]
#: Poll interval of the replicas under test (the default is 0.5 s).
POLL_S = 0.1
T = TypeVar("T")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A private redis-server for the module."""
    with redis_server() as server:
        yield server


@pytest.fixture
def settings(redis: RedisServer) -> Settings:
    """Replica settings on a fresh prefix of the shared Redis."""
    return Settings(redis_url=redis.url, redis_prefix=f"t-{uuid.uuid4().hex[:8]}:",
                    shared_poll_s=POLL_S)


@contextmanager
def replica(settings: Settings) -> Iterator[TestClient]:
    """One replica, started (its lifespan loads the shared documents) and stopped."""
    with TestClient(make_app(settings=settings)) as client:
        yield client


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = 10.0) -> T:
    """``probe()`` once it answers something other than None (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.02)
    raise AssertionError(f"{what} within {timeout_s} s")


def fabric_of(client: TestClient) -> dict[str, Any] | None:
    """The fabric a replica serves, or None while it has none."""
    answer = client.get("/v1/topology/fabric", headers=bearer(WORKER))
    return answer.json() if answer.status_code == 200 else None


def same_fabric(b: TestClient, a: TestClient) -> dict[str, Any]:
    """Wait until ``a`` and ``b`` serve one fabric; that fabric."""
    def probe() -> dict[str, Any] | None:
        seen = fabric_of(a)
        return seen if seen is not None and fabric_of(b) == seen else None
    return eventually(probe, "both replicas serve one fabric")


def leaf(fabric: dict[str, Any], host: str, nic: str = "mlx5_0") -> str:
    """The leaf of ``host``'s ``nic``."""
    entry = next(h for h in fabric["hosts"] if h["name"] == host)
    found: str = next(n["leaf"] for n in entry["nics"] if n["device"] == nic)
    return found


def job_of(client: TestClient, job_id: str) -> dict[str, Any] | None:
    """A finished job as ``client`` reports it, else None."""
    answer = client.get(f"/v1/placement/jobs/{job_id}", headers=bearer(WORKER))
    if answer.status_code != 200 or answer.json()["status"] not in ("done", "failed"):
        return None
    job: dict[str, Any] = answer.json()
    return job


def test_feeds_put_to_a_are_served_by_b(settings: Settings) -> None:
    spec = cluster(hosts=2)
    with replica(settings) as a, replica(settings) as b:
        assert fabric_of(b) is None
        load_cluster(a, spec)
        same_fabric(b, a)
        h0, h1 = (h.name for h in spec.hosts)
        distance = b.get("/v1/topology/distance", headers=bearer(WORKER),
                         params={"a": f"{h0}/gpu0", "b": f"{h1}/gpu0"})
        assert distance.status_code == 200 and distance.json()["tier"] == "same_leaf"
        for name, role, gpus in (("prefill-0", "prefill", [f"{h0}/gpu0"]),
                                 ("decode-0", "decode", [f"{h1}/gpu0"])):
            answer = a.post("/v1/workers", json=worker_json(name, role, gpus),
                            headers=bearer(WORKER))
            assert answer.status_code == 201, answer.text
        routed = b.post("/v1/route", json={"block_hashes": [1, 2], "model": "llama-3-70b"},
                        headers=bearer(WORKER))
        assert routed.status_code == 200, routed.text
        assert routed.json()["decision"]["decode"]["worker"] == "decode-0"


def test_an_edit_on_b_keeps_the_edits_made_on_a(settings: Settings) -> None:
    spec = cluster(hosts=4)
    with replica(settings) as a, replica(settings) as b:
        load_cluster(a, spec)
        # no wait for b to follow: each edit reads the latest feeds before it writes
        moves = [(a if i % 2 else b, h) for i, h in enumerate(spec.hosts)]
        with ThreadPoolExecutor(len(moves)) as pool:
            answers = list(pool.map(lambda m: _move_first_nic(*m), moves))
        assert all(status == 200 for status in answers), answers
        fabric = same_fabric(b, a)
        assert all(leaf(fabric, h.name) == "z0-p0-rail1" for h in spec.hosts)


def _move_first_nic(client: TestClient, host: Any) -> int:
    # NIC0 moves to rail1 on a port of its own: rail1's port for this host is NIC1's
    moved = (lldp_json0(host).replace('"z0-p0-rail0"', '"z0-p0-rail1"')
             .replace('"value": "Ethernet', '"value": "Ethernet9', 1))
    answer = client.put(f"/v1/topology/hosts/{host.name}/lldp", content=moved,
                        headers=bearer())
    status: int = answer.status_code
    return status


def test_placement_and_jobs_started_on_a_are_seen_on_b(settings: Settings) -> None:
    with replica(settings) as a, replica(settings) as b:
        load_cluster(a, cluster())
        accepted = a.post("/v1/placement/solve", json=target(), headers=bearer()).json()
        job_id = accepted["job"]["id"]
        job = eventually(lambda: job_of(b, job_id), "b reports a's job finished", 60)
        assert job["status"] == "done", job["error"]
        assert job["progress"], "the progress lines reach the other replica"
        assert [j["id"] for j in b.get("/v1/placement/jobs", headers=bearer()).json()] == \
            [job_id]
        current = eventually(lambda: _placement(b), "b serves the placement")
        assert current["origin"] == "solve" and current["placement"] == job["result"]
        applied = b.put("/v1/placement", json={"placement": job["result"], "target": target()},
                        headers=bearer())
        assert applied.status_code == 200, applied.text
        eventually(lambda: True if (_placement(a) or {}).get("origin") == "apply" else None,
                   "a serves the placement applied on b")


def _placement(client: TestClient) -> dict[str, Any] | None:
    answer = client.get("/v1/placement", headers=bearer(WORKER))
    return answer.json() if answer.status_code == 200 else None


def test_a_fabric_change_on_b_re_solves_once_and_a_follows(settings: Settings) -> None:
    spec = cluster()
    with replica(settings) as a, replica(settings) as b:
        load_cluster(a, spec)
        accepted = a.post("/v1/placement/solve", json=target(), headers=bearer()).json()
        placed = eventually(lambda: job_of(a, accepted["job"]["id"]), "the solve", 60)
        used = {g for i in placed["result"]["instances"] for g in i["gpus"]}
        victim = next(h for h in spec.hosts if f"{h.name}/gpu7" in used)
        eventually(lambda: _placement(b), "b serves the placement")
        answer = b.put(f"/v1/topology/hosts/{victim.name}/nvidia-smi",
                       content=nvsmi_text(fewer_gpus(victim)), headers=bearer())
        assert answer.status_code == 200, answer.text
        replan = answer.json()["replan_job"]
        assert replan is not None
        job = eventually(lambda: job_of(a, replan), "a reports b's re-solve", 60)
        assert job["kind"] == "re-solve" and job["status"] == "done", job["error"]
        eventually(lambda: True if (_placement(a) or {}).get("origin") == "re-solve" else None,
                   "a serves the re-solved placement")
        kinds = [j["kind"] for j in a.get("/v1/placement/jobs", headers=bearer()).json()]
        assert kinds == ["solve", "re-solve"], "one re-solve, by the replica that wrote"


def test_a_restarted_replica_recovers_fabric_and_placement(settings: Settings) -> None:
    with replica(settings) as a:
        load_cluster(a, cluster())
        a.put("/v1/placement", json=_solved_placement(a), headers=bearer())
        wanted_fabric, wanted_placement = fabric_of(a), _placement(a)
    assert wanted_placement is not None and wanted_placement["origin"] == "apply"
    with replica(settings) as restarted:  # no wait: loaded before it serves
        assert fabric_of(restarted) == wanted_fabric
        assert _placement(restarted) == wanted_placement
        assert restarted.get("/readyz").status_code == 200


def _solved_placement(client: TestClient) -> dict[str, Any]:
    accepted = client.post("/v1/placement/solve", json=target(), headers=bearer()).json()
    job = eventually(lambda: job_of(client, accepted["job"]["id"]), "the solve", 60)
    return {"placement": job["result"], "target": target()}


def test_the_start_up_fabric_seeds_only_an_empty_store(settings: Settings,
                                                       tmp_path: Path) -> None:
    paths = []
    for hosts in (2, 3):
        path = tmp_path / f"fabric-{hosts}.json"
        cluster(hosts=hosts).save(path)
        paths.append(path)
    first = settings.model_copy(update={"fabric": paths[0]})
    second = settings.model_copy(update={"fabric": paths[1]})
    with replica(first) as a, replica(second) as b:
        assert fabric_of(a) == fabric_of(b)
        assert len((fabric_of(b) or {})["hosts"]) == 2
