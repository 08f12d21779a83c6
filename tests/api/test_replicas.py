"""Two ``toposched serve`` replicas sharing a private redis-server, with real sidecars.

Sidecars register through one replica and transfers are submitted through the other;
NIXL moves real bytes between the sidecar processes and the destination's fake engine
verifies its whole pool. Then the faults: a replica restart, Redis stopped and started
again (append-only file: nothing is lost), a sidecar killed. Topology feeds put through
one replica are served by the other.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.service_builders import cluster, inventory_yaml
from tests.servers import RedisServer, free_port, start_redis
from tests.sidecar.harness import (
    AUTH,
    SERVER_TOKENS,
    START_TIMEOUT_S,
    Cluster,
    Proc,
    _cli,
    _spawn,
    wait_for,
)
from topology.spec import FabricSpec
from topology.writers import lldp_json0, nvsmi_text

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]
BLOCK = 16384
ENV = {"TOPOSCHED_LEASE_TTL_S": "3", "TOPOSCHED_EXPIRE_INTERVAL_S": "0.2",
       "TOPOSCHED_TRANSFER_DEADLINE_S": "5", **SERVER_TOKENS}


@dataclass
class Replica:
    """One scheduler replica process."""

    port: int
    proc: Proc

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"


def start_replica(workdir: Path, name: str, redis_url: str, port: int | None = None,
                  env: dict[str, str] | None = None) -> Replica:
    """Start ``toposched serve --redis URL`` and wait for /healthz (``env``: settings
    over :data:`ENV`)."""
    port = port or free_port()
    log = workdir / f"{name}.log"
    proc = Proc(_spawn(_cli("serve", "--port", str(port), "--redis", redis_url), log,
                       {**ENV, **(env or {})}), log)
    replica = Replica(port, proc)
    wait_for(lambda: httpx.get(f"{replica.url}/healthz", timeout=1).status_code == 200,
             START_TIMEOUT_S, f"replica {name}")
    return replica


@contextmanager
def two_replicas(workdir: Path, env: dict[str, str] | None = None
                 ) -> Iterator[tuple[RedisServer, Replica, Replica, Cluster]]:
    """Redis (with an append-only file), replicas A and B, a sidecar cluster on A."""
    redis = start_redis(data_dir=workdir)
    a = start_replica(workdir, "replica-a", redis.url, env=env)
    b = start_replica(workdir, "replica-b", redis.url, env=env)
    sidecars = Cluster(a.url, workdir, a.proc)
    try:
        yield redis, a, b, sidecars
    finally:
        for proc in sidecars.sidecars.values():
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(5)
        sidecars.http.close()
        for replica in (a, b):
            replica.proc.stop(signal.SIGTERM, 10)
        redis.stop()


def _submit(replica: Replica, plan_id: str, blocks: int = 8,
            src: str = "prefill-0") -> httpx.Response:
    return httpx.post(f"{replica.url}/v1/transfers", headers=AUTH, timeout=10,
                      json={"src": src, "dst": "decode-0",
                            "src_blocks": list(range(blocks)), "plan_id": plan_id})


def _finished(replica: Replica, plan_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        record: dict[str, Any] = httpx.get(f"{replica.url}/v1/transfers/{plan_id}",
                                           headers=AUTH,
                                           params={"wait_s": 1.0}, timeout=5).json()
        # done at the destination's (the READ initiator's) report: the prefill side, a
        # passive target, sends none
        finished = record.get("state") == "failed" or (
            record.get("state") == "done" and len(record["reports"]) >= 1)
        return record if finished else None
    result: dict[str, Any] = wait_for(done, timeout_s, f"transfer {plan_id}")
    return result


def _verified(record: dict[str, Any]) -> bool:
    return any(r["worker"] == "decode-0" and r["verified"] for r in record["reports"])


def _workers(replica: Replica) -> list[str]:
    data = httpx.get(f"{replica.url}/v1/workers", headers=AUTH, timeout=5).json()
    return sorted(w["registration"]["name"] for w in data)


def test_replicas_share_workers_and_transfers_move_real_bytes(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (_, a, b, sidecars):
        sidecars.sidecar("prefill-0", block_bytes=BLOCK)
        sidecars.sidecar("decode-0", block_bytes=BLOCK)
        assert _workers(b) == ["decode-0", "prefill-0"]       # registered through A
        assert _submit(b, "through-b").status_code == 201     # submitted through B
        record = _finished(a, "through-b")                    # finished, seen from A
        assert record["state"] == "done" and _verified(record), record


def test_replica_restart_recovers_its_view_from_redis(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (redis, a, b, sidecars):
        sidecars.sidecar("prefill-0", block_bytes=BLOCK)
        sidecars.sidecar("decode-0", block_bytes=BLOCK)
        b.proc.stop(signal.SIGTERM, 10)
        restarted = start_replica(tmp_path, "replica-b2", redis.url, port=b.port)
        b.proc = restarted.proc
        assert _workers(restarted) == ["decode-0", "prefill-0"]
        assert _submit(restarted, "after-restart").status_code == 201
        assert _finished(a, "after-restart")["state"] == "done"


def test_redis_outage_is_503_then_recovers_with_nothing_lost(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (redis, a, b, sidecars):
        sidecars.sidecar("prefill-0", block_bytes=BLOCK)
        sidecars.sidecar("decode-0", block_bytes=BLOCK)
        redis.stop()
        response = httpx.get(f"{a.url}/v1/workers", headers=AUTH, timeout=10)
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.headers["content-type"] == "application/problem+json"
        revived = start_redis(port=redis.port, data_dir=tmp_path)
        redis.process = revived.process
        wait_for(lambda: _workers(b) == ["decode-0", "prefill-0"], 20, "workers after Redis")
        assert _submit(b, "after-outage").status_code == 201
        assert _finished(a, "after-outage")["state"] == "done"


def test_killed_sidecar_lease_expires_and_transfers_fail_cleanly(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (_, a, b, sidecars):
        sidecars.sidecar("prefill-0", block_bytes=BLOCK)
        decode = sidecars.sidecar("decode-0", block_bytes=BLOCK)
        decode.popen.send_signal(signal.SIGSTOP)             # hangs: cannot answer jobs
        assert _submit(b, "in-flight").status_code == 201
        decode.popen.kill()
        wait_for(lambda: _workers(a) == ["prefill-0"], 20, "the lease to expire")
        record = _finished(b, "in-flight")
        assert record["state"] == "failed" and record["recompute"] is True
        refused = _submit(a, "to-the-dead")
        assert refused.status_code == 404
        assert refused.headers["content-type"] == "application/problem+json"


def test_topology_put_through_one_replica_is_served_by_the_other(tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (_, a, b, _sidecars):
        spec = cluster(hosts=2)
        _put_captures(a, spec)
        assert _put_inventory(b, spec)["fabric_loaded"]
        fabric = wait_for(lambda: _fabric(a), 10, "replica A serves the fabric built on B")
        assert fabric == _fabric(b) and len(fabric["hosts"]) == 2


def _fabric(replica: Replica) -> dict[str, Any] | None:
    answer = httpx.get(f"{replica.url}/v1/topology/fabric", headers=AUTH, timeout=5)
    return answer.json() if answer.status_code == 200 else None


def test_a_request_routed_through_b_moves_real_bytes_between_sidecars_registered_on_a(
        tmp_path: Path) -> None:
    with two_replicas(tmp_path) as (_, a, b, sidecars):
        spec = cluster(hosts=2)
        _put_feeds(a, spec)
        h0, h1 = (host.name for host in spec.hosts)
        for name, role, gpu in (("prefill-0", "prefill", f"{h0}/gpu0"),
                                ("decode-0", "decode", f"{h1}/gpu0")):
            sidecars.sidecar(name, block_bytes=BLOCK, extra=(
                "--role", role, "--gpu", gpu, "--model", "llama-3-70b", "--block-tokens", "512"))
        wait_for(lambda: _fabric(b), 10, "replica B serves the fabric posted to A")
        answer = httpx.post(f"{b.url}/v1/route", headers=AUTH, timeout=10, json={
            "block_hashes": [11, 12, 13], "model": "llama-3-70b"})
        assert answer.status_code == 200, answer.text
        decision, plan_id = answer.json()["decision"], answer.json()["plan_id"]
        assert (decision["prefill"]["worker"], decision["decode"]["worker"]) == (
            "prefill-0", "decode-0")
        assert decision["transfer"]["blocks"] == 3 and plan_id
        record = _finished(a, plan_id)                        # moved, seen from A
        assert record["state"] == "done" and _verified(record), record


def _route(replica: Replica, first: int) -> tuple[str, str, str]:
    """``POST /v1/route`` of three blocks: (prefill, decode, plan id)."""
    answer = httpx.post(f"{replica.url}/v1/route", headers=AUTH, timeout=10, json={
        "block_hashes": [first, first + 1, first + 2], "model": "llama-3-70b"})
    assert answer.status_code == 200, answer.text
    decision = answer.json()["decision"]
    return decision["prefill"]["worker"], decision["decode"]["worker"], answer.json()["plan_id"]


def _draining(replica: Replica, name: str) -> bool | None:
    """Whether live worker ``name`` is draining (None: not registered)."""
    listing = httpx.get(f"{replica.url}/v1/workers", headers=AUTH, timeout=5).json()
    return next((w["draining"] for w in listing if w["registration"]["name"] == name), None)


def test_b_routes_around_a_sidecar_draining_on_a_until_it_registers_again(
        tmp_path: Path) -> None:
    # decode-0 holds each job 2.5 s, one after the other: deadlines of 15 s
    with two_replicas(tmp_path, {"TOPOSCHED_TRANSFER_DEADLINE_S": "15"}) as (_, a, b, sidecars):
        spec = cluster(hosts=2)
        _put_feeds(a, spec)
        h0, h1 = (host.name for host in spec.hosts)

        def start(name: str, role: str, gpu: str, *extra: str) -> Proc:
            return sidecars.sidecar(name, block_bytes=BLOCK, extra=(
                "--role", role, "--gpu", gpu, "--model", "llama-3-70b",
                "--block-tokens", "512", *extra))

        start("prefill-0", "prefill", f"{h0}/gpu0")
        start("decode-0", "decode", f"{h1}/gpu0", "--debug-hold", "2.5")
        prefill_1 = start("prefill-1", "prefill", f"{h1}/gpu1")  # decode-0's NVLink
        wait_for(lambda: _fabric(b), 10, "replica B serves the fabric posted to A")
        first = _route(b, 11)
        assert first[:2] == ("prefill-1", "decode-0")
        assert _finished(a, first[2])["state"] == "done"  # its prefill load ends with it
        # a read of prefill-1 that decode-0 holds: prefill-1, draining, stays registered
        # until it ended
        assert _submit(a, "pending", src="prefill-1").status_code == 201
        prefill_1.popen.send_signal(signal.SIGTERM)  # announces the drain through A
        wait_for(lambda: _draining(b, "prefill-1"), 5, "B to see prefill-1 draining")
        around = _route(b, 21)
        assert around[:2] == ("prefill-0", "decode-0")
        assert _draining(b, "prefill-1") is True  # (it was still there when B routed)
        assert prefill_1.stop(signal.SIGTERM) == 0  # drained: the pending read ended
        for plan_id in ("pending", around[2]):
            record = _finished(a, plan_id)
            assert record["state"] == "done" and _verified(record), record
        start("prefill-1", "prefill", f"{h1}/gpu1")  # registers again: back in routing
        assert _route(b, 31)[:2] == ("prefill-1", "decode-0")


def _put_feeds(replica: Replica, spec: FabricSpec) -> None:
    _put_captures(replica, spec)
    _put_inventory(replica, spec)


def _put_captures(replica: Replica, spec: FabricSpec) -> None:
    for host in spec.hosts:
        for path, text in (("nvidia-smi", nvsmi_text(host)), ("lldp", lldp_json0(host))):
            answer = httpx.put(f"{replica.url}/v1/topology/hosts/{host.name}/{path}",
                               headers=AUTH,
                               content=text, timeout=10)
            assert answer.status_code == 200, answer.text


def _put_inventory(replica: Replica, spec: FabricSpec) -> dict[str, Any]:
    answer = httpx.put(f"{replica.url}/v1/topology/inventory", headers=AUTH,
                       content=inventory_yaml(spec), timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body
