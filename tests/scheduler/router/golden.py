"""Golden decisions: seeded routing scenarios whose every decision is recorded exactly.

Changes to the router's data structures (the pair figures, snapshots, pruning) must
not change a single decision; ``golden_decisions.json`` holds what the code decided
when it was written, and ``test_golden.py`` checks that it still decides so. Each
scenario routes a sequence of requests with every packaged policy over one synthetic
fabric, with random loads, cached prefixes, pairings, sessions, link load and tier
scales, and changes the worker set (one leaves, one joins) half-way.

A deliberate change of the cost model changes decisions: rewrite the file with
``python -m tests.scheduler.router.golden --write`` and say so in the commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from policies.profile import Policy, policy_names, resolve_policy
from policies.registry import default_registry
from policies.snapshot import Role, Snapshot, Worker
from scheduler.prefix import PrefixIndex
from scheduler.router.router import Router, RouteResult
from scheduler.router.snapshot import build_snapshot
from topology.distance import DistanceModel
from topology.synth import SynthParams, synth_cluster
from topology.tiers import Tier

GOLDEN = Path(__file__).with_name("golden_decisions.json")
BLOCK = 16
#: (template, rails, NVLink domain per rack) of each fabric the scenarios use.
FABRICS = (("hgx-h100", True, False), ("pcie-l40s", False, False), ("gb200-nvl", False, True),
           ("hgx-a100", True, False))
SIZES = (6, 40, 150)
SEEDS_PER_SHAPE = 4
REQUESTS = 8


@cache
def distance(template: str, rails: bool, nvl: bool) -> DistanceModel:
    """The distance model of one small synthetic fabric."""
    return DistanceModel(synth_cluster(SynthParams(
        zones=2, pods_per_zone=2, racks_per_pod=2, hosts_per_rack=3, template=template,
        rails=rails, nvlink_domain_per_rack=nvl, zone_oversubscription=8.0)))


@dataclass
class _Scenario:
    rng: random.Random
    model: DistanceModel
    workers: list[Worker]
    index: PrefixIndex
    chains: list[list[int]]
    serial: int = 0

    def new_worker(self) -> Worker:
        self.serial += 1
        rng, names = self.rng, self.model.names
        count = rng.choice((1, 1, 2, 4))
        start = rng.randrange(len(names))
        gpus = tuple(names[(start + i) % len(names)] for i in range(count))
        capacity = rng.choice((64, 4_000, 100_000))
        return Worker(f"w{self.serial}", rng.choice(list(Role)), gpus,
                      queued_tokens=rng.choice((0, 0, rng.randrange(20_000))),
                      running_requests=rng.randrange(0, 300),
                      max_running_requests=rng.choice((8, 256)),
                      free_kv_blocks=rng.choice((0, rng.randrange(capacity + 1), capacity)),
                      capacity_kv_blocks=capacity,
                      prefill_tokens_per_s=rng.choice((10_000.0, 20_000.0, 40_000.0)),
                      cached_kv_blocks=rng.randrange(0, 500))

    def cache_some(self, worker: Worker) -> None:
        rng = self.rng
        if rng.random() < 0.5:
            chain = rng.choice(self.chains)
            self.index.resync(worker.id, chain[: rng.randrange(1, len(chain) + 1)])

    def snapshot(self) -> Snapshot:
        rng, ids = self.rng, [w.id for w in self.workers]
        pairs = {(rng.choice(ids), rng.choice(ids)): rng.choice((0.5, 1.0))
                 for _ in range(rng.randrange(0, 6))}
        load: dict[str, int] = {}
        for _ in range(rng.randrange(0, 8)):
            a, b = rng.choice(self.workers), rng.choice(self.workers)
            for link in self.model.path_links(a.gpus[0], b.gpus[0]):
                load[link] = load.get(link, 0) + rng.randrange(1, 4)
        return build_snapshot(self.model, self.workers, preferred_pairs=pairs, link_load=load,
                              block_tokens=BLOCK, kv_bytes_per_token=rng.choice((131_072,
                                                                                 327_680)))


def _request(rng: random.Random, chains: list[list[int]], i: int) -> dict[str, Any]:
    chain = rng.choice(chains)
    blocks = chain[: rng.randrange(1, len(chain) + 1)] + [10_000 + i * 100 + k
                                                           for k in range(rng.randrange(3))]
    request: dict[str, Any] = {"request_id": f"r{i}", "block_hashes": blocks}
    if rng.random() < 0.3:
        request["prompt_tokens"] = len(blocks) * BLOCK - rng.randrange(BLOCK)
    if rng.random() < 0.4:
        request["session"] = f"s{rng.randrange(3)}"
    return request


def _record(result: RouteResult) -> dict[str, Any]:
    data = result.model_dump(mode="json", exclude={"decision_us"})
    # prefix pulls (off in these policies) came later: their empty fields are left out,
    # so the recorded fingerprints stay those of the decisions before them
    if data.get("pull", 0) is None:
        del data["pull"]
    if data.get("estimate", {}).get("pull_s") == 0.0:
        del data["estimate"]["pull_s"]
    return json.loads(json.dumps(data), parse_float=lambda text: text)  # floats as written


def scenario(shape: int, size: int, seed: int, policy: Policy) -> Iterator[dict[str, Any]]:
    """Every decision of one scenario, in order (a pure function of its arguments)."""
    rng = random.Random(f"{shape}/{size}/{seed}")
    model = distance(*FABRICS[shape])
    chains = [[rng.randrange(1, 1 << 40) for _ in range(rng.randrange(2, 12))]
              for _ in range(4)]
    sc = _Scenario(rng, model, [], PrefixIndex(), chains)
    sc.workers = [sc.new_worker() for _ in range(size)]
    for w in sc.workers:
        sc.cache_some(w)
    router = Router(model, policy, index=sc.index, seed=seed)
    if rng.random() < 0.5:
        router.set_tier_scales({Tier(t).label: (rng.uniform(0.5, 3.0), rng.uniform(0.2, 1.5))
                                for t in rng.sample(range(len(Tier)), 3)})
    snap = sc.snapshot()
    for i in range(REQUESTS):
        if i == REQUESTS // 2:  # one worker leaves, one joins
            gone = sc.workers.pop(rng.randrange(len(sc.workers)))
            sc.index.remove_worker(gone.id)
            sc.workers.insert(rng.randrange(len(sc.workers) + 1), sc.new_worker())
            snap = sc.snapshot()
        elif i % 3 == 2:  # load changes only: a patched snapshot
            pos = rng.randrange(len(sc.workers))
            moved = replace(sc.workers[pos], running_requests=rng.randrange(300),
                            free_kv_blocks=rng.randrange(sc.workers[pos].capacity_kv_blocks + 1))
            sc.workers[pos] = moved
            snap = snap.updated({pos: moved})
        yield _record(router.route(_request(rng, chains, i), snap))


def all_scenarios() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(scenario key, its decisions) for every shape, size, seed and policy."""
    registry = default_registry()
    policies = {name: resolve_policy(name, registry) for name in policy_names()}
    for shape in range(len(FABRICS)):
        for size in SIZES:
            for seed in range(SEEDS_PER_SHAPE):
                for name, policy in policies.items():
                    yield f"{shape}/{size}/{seed}/{name}", list(scenario(shape, size, seed,
                                                                         policy))


def digest(decisions: list[dict[str, Any]]) -> str:
    """A short fingerprint of a scenario's decisions (exact: floats as printed)."""
    text = json.dumps(decisions, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def summary(decisions: list[dict[str, Any]]) -> list[str]:
    """The pairs chosen, readable in a diff."""
    return [f"{d['prefill']['worker']}>{d['decode']['worker']}" if d["status"] == "scheduled"
            else "unschedulable" for d in decisions]


def main(argv: list[str] | None = None) -> int:
    """Print or (``--write``) store the golden decisions."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN.name}")
    args = parser.parse_args(argv)
    golden = {key: {"digest": digest(d), "pairs": summary(d)} for key, d in all_scenarios()}
    text = json.dumps(golden, indent=0, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
