"""Prefix matching through ``POST /v1/route``: the engines' block size, approximate mode,
and the prefill worker's cache."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from api.settings import Settings
from scheduler.prefix import block_hashes
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    own_bearer,
    worker_json,
)

MODEL = "llama-3-70b"
PREFIX = [random.Random(7).randrange(1, 100_000) for _ in range(2048)]


@contextmanager
def serving(settings: Settings | None = None, block_tokens: int | None = None
            ) -> Iterator[TestClient]:
    """A replica with a prefill and a decode worker on two hosts (roomy KV pools)."""
    spec = cluster(hosts=2)
    with TestClient(make_app(settings=settings)) as client:
        load_cluster(client, spec)
        h0, h1 = (h.name for h in spec.hosts)
        for name, role, host in (("prefill-0", "prefill", h0), ("decode-0", "decode", h1)):
            reg = worker_json(name, role, [f"{host}/gpu0"], num_blocks=4096)
            reg["block_tokens"] = block_tokens
            answer = client.post("/v1/workers", json=reg, headers=bearer(WORKER))
            assert answer.status_code == 201, answer.text
        yield client


def _route(client: TestClient, tokens: list[int], **extra: Any) -> dict[str, Any]:
    answer = client.post("/v1/route", json={"tokens": tokens, "model": MODEL, **extra},
                         headers=bearer(WORKER))
    assert answer.status_code == 200, answer.text
    decision: dict[str, Any] = answer.json()["decision"]
    return decision


def test_a_follow_up_finds_the_prefix_on_the_prefill_worker_that_computed_it() -> None:
    with serving() as client:
        first = _route(client, PREFIX + [1] * 100)
        assert first["mode"] == "disaggregated" and first["prefill"]["worker"] == "prefill-0"
        follow_up = _route(client, PREFIX + [2] * 300)
        assert follow_up["prefill"]["worker"] == "prefill-0"
        assert follow_up["prefill"]["cached_blocks"] == 2048 // 16


def test_prefill_caches_can_be_left_unindexed() -> None:
    with serving(Settings(prefill_cache_ttl_s=0)) as client:
        _route(client, PREFIX + [1] * 100)
        assert _route(client, PREFIX + [2] * 300)["prefill"]["cached_blocks"] == 0


def test_token_prompts_are_hashed_in_the_block_size_the_workers_registered() -> None:
    for size in (16, 32):
        with serving(Settings(prefill_cache_ttl_s=0), block_tokens=size) as client:
            event = {"kind": "block_stored", "worker": "decode-0", "seq": 1, "model": MODEL,
                     "block_hashes": block_hashes(PREFIX, size)}  # as the engine stores it
            answer = client.post("/v1/kv-events", json=event, headers=own_bearer("decode-0"))
            assert answer.status_code == 200, answer.text
            decision = _route(client, PREFIX + [3] * 40)
            assert decision["decode"]["cached_blocks"] == 2048 // size


def test_the_block_size_setting_applies_when_workers_register_none() -> None:
    settings = Settings(prefill_cache_ttl_s=0, model_block_tokens={MODEL: 64})
    with serving(settings) as client:
        event = {"kind": "block_stored", "worker": "decode-0", "seq": 1, "model": MODEL,
                 "block_hashes": block_hashes(PREFIX, 64)}
        assert client.post("/v1/kv-events", json=event,
                           headers=own_bearer("decode-0")).status_code == 200
        assert _route(client, PREFIX)["decode"]["cached_blocks"] == 2048 // 64


def test_approximate_mode_counts_routed_blocks_on_both_workers() -> None:
    chain = PREFIX[:1024]
    with serving(Settings(prefill_cache_ttl_s=0, prefix_approx_ttl_s=60)) as client:
        first = _route(client, chain)
        second = _route(client, chain)
        chosen = {first["prefill"]["worker"], first["decode"]["worker"]}
        assert second["decode"]["worker"] in chosen
        assert second["decode"]["cached_blocks"] == 1024 // 16
    with serving(Settings(prefill_cache_ttl_s=0)) as client:  # off by default
        _route(client, chain)
        assert _route(client, chain)["decode"]["cached_blocks"] == 0
