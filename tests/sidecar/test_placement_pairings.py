"""A solved placement reaches the router, end to end with real processes: the placement
is solved through the API, sidecars register under its instance ids (``prefill-HOST/gpu0``,
with a ``/``) and routes follow its pairings.

The ``/`` once made every per-worker URL (heartbeat, job poll) answer 404 for such
sidecars: they never got a job, registered again at every heartbeat, and their
transfers failed "re-registered".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.service_builders import cluster as synth_cluster
from tests.api.service_builders import inventory_yaml, target
from tests.sidecar.harness import Cluster, cluster, wait_for
from topology.writers import lldp_json0, nvsmi_text

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]
MODEL = "llama-3-70b"
LEASE_TTL_S = 1.5  # heartbeats every 0.5 s: the test outlives several


def _put(c: Cluster, path: str, text: str, content_type: str = "text/plain") -> None:
    answer = c.http.put(f"{c.url}{path}", content=text, headers={"Content-Type": content_type})
    assert answer.status_code == 200, answer.text


def _solve(c: Cluster) -> dict[str, Any]:
    spec = synth_cluster(hosts=4)
    for host in spec.hosts:
        _put(c, f"/v1/topology/hosts/{host.name}/nvidia-smi", nvsmi_text(host))
        _put(c, f"/v1/topology/hosts/{host.name}/lldp", lldp_json0(host))
    _put(c, "/v1/topology/inventory", inventory_yaml(spec), "application/yaml")
    # One host per instance: every prefill is as far from either decode instance, so
    # only the placement's pairing tells the router which decode to take.
    accepted = c.http.post(f"{c.url}/v1/placement/solve", json=target(tp_prefill=8,
                                                                       tp_decode=8))
    assert accepted.status_code == 202, accepted.text
    job_path = f"{c.url}/v1/placement/jobs/{accepted.json()['job']['id']}"
    job = wait_for(lambda: (j := c.http.get(job_path).json())["status"] in ("done", "failed")
                   and j, 60, "the placement solve")
    assert job["status"] == "done", job["error"]
    placement: dict[str, Any] = job["result"]
    return placement


def _route(c: Cluster, first: int) -> dict[str, Any]:
    answer = c.http.post(f"{c.url}/v1/route", json={
        "block_hashes": [first, first + 1], "model": MODEL, "request_id": f"r{first}"})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _route_rounds(c: Cluster, first: int, rounds: int = 6) -> set[tuple[str, str]]:
    """Routes in pairs (the second finds the first prefill busy), each transfer waited
    for; the (prefill, decode) pairs chosen."""
    routed: list[dict[str, Any]] = []
    for round_ in range(rounds):
        routed += [_route(c, first + 1000 * round_), _route(c, first + 1000 * round_ + 500)]
        for body in routed[-2:]:
            assert body["plan_id"], f"not disaggregated: {body['decision']['notes']}"
            record = c.finished(body["plan_id"])
            assert record["state"] == "done", record["error"]
            assert all(p["verified"] for p in record["reports"]
                       if p["worker"] == record["plan"]["dst"]["worker"])
        time.sleep(0.2)  # routes span several lease renewals
    return {(b["decision"]["prefill"]["worker"], b["decision"]["decode"]["worker"])
            for b in routed}


def test_routes_follow_the_pairings_of_a_solved_placement(tmp_path: Path) -> None:
    with cluster(tmp_path, lease_ttl_s=LEASE_TTL_S) as c:
        placement = _solve(c)
        pairs = {(p["prefill"], p["decode"]) for p in placement["pairings"]}
        assert len(pairs) == 2 and all("/" in name for pair in pairs for name in pair)
        for instance in placement["instances"]:
            gpus = [arg for gpu in instance["gpus"] for arg in ("--gpu", gpu)]
            c.sidecar(instance["id"], kv_blocks=64, decode_ms=300, extra=(
                "--role", instance["role"], "--model", MODEL, *gpus))
        time.sleep(LEASE_TTL_S)  # every sidecar renews its lease at least twice
        assert _route_rounds(c, 0) == pairs  # every route on a pairing, both used
        # Every pair is as far as every other, so geometry alone could give the same
        # routes: cross the pairings (same instances) and the routes cross with them.
        crossed = {**placement, "pairings": [
            {**p, "decode": q["decode"]} for p, q in
            zip(placement["pairings"], placement["pairings"][::-1], strict=True)]}
        applied = c.http.put(f"{c.url}/v1/placement", json={
            "placement": crossed, "target": target(tp_prefill=8, tp_decode=8)})
        assert applied.status_code == 200, applied.text
        crossed_pairs = {(p["prefill"], p["decode"]) for p in crossed["pairings"]}
        assert crossed_pairs.isdisjoint(pairs)
        assert _route_rounds(c, 100_000) == crossed_pairs
        workers = c.http.get(f"{c.url}/v1/workers").json()
        assert sorted(w["registration"]["name"] for w in workers) == sorted(
            i["id"] for i in placement["instances"])
        assert {w["lease"]["epoch"] for w in workers} == {1}, "nobody registered again"
        # Nobody released anything by hand: each transfer's end gave back the prefill
        # load, each fake engine's end of its request the decode load and blocks.
        wait_for(lambda: _idle(c, workers), 15, "every load and block to come back")


def _idle(c: Cluster, workers: list[dict[str, Any]]) -> bool:
    loads = [c.http.get(f"{c.url}/v1/workers/{quote(w['registration']['name'], safe='')}"
                        "/load").json() for w in workers]
    free = [w["free_blocks"] for w in c.http.get(f"{c.url}/v1/workers").json()]
    return all(load["tokens"] == load["requests"] == 0 for load in loads) and free == [64] * 4
