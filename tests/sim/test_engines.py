"""KV caches (LRU, pinning, events into the real prefix index) and decode epochs."""

from __future__ import annotations

import pytest

from policies.snapshot import Role
from scheduler.capacity import build_profile
from scheduler.models_config import load_models
from scheduler.prefix import PrefixIndex
from sim.clock import EventKind, EventQueue
from sim.engines import Instance, Job, KvCache
from tests.sim.builders import request


def test_cache_reports_stores_and_evictions_to_the_prefix_index() -> None:
    index = PrefixIndex(max_entries=None)
    cache = KvCache("w0", capacity_blocks=4, index=index)
    cache.acquire([1, 2, 3])
    assert index.match([1, 2, 3, 9])["w0"].blocks == 3
    cache.release([1, 2, 3])
    cache.acquire([7, 8])  # 5 blocks > 4: the least recently used (1) goes
    assert cache.match([1, 2]) == 0
    assert index.match([1, 2])["w0"].blocks == 0
    assert index.match([2, 3])["w0"].blocks == 0 or cache.match([2]) == 1
    assert cache.evicted == 1


def test_pinned_blocks_are_never_evicted_and_fits_says_so() -> None:
    cache = KvCache("w0", capacity_blocks=3)
    cache.acquire([1, 2], extra=1)
    assert cache.free == 0
    assert not cache.fits([5])
    assert cache.fits([1, 2])  # already pinned blocks cost nothing more
    cache.release([1, 2], extra=1)
    assert cache.free == 3
    assert cache.fits([5, 6, 7])
    assert cache.match([1, 2, 5]) == 2


def test_reacquired_block_moves_to_the_recent_end() -> None:
    cache = KvCache("w0", capacity_blocks=2)
    cache.acquire([1])
    cache.release([1])
    cache.acquire([2])
    cache.release([2])
    cache.acquire([1])
    cache.release([1])
    cache.acquire([3])  # evicts 2, the least recently released
    assert cache.match([1]) == 1
    assert cache.match([2]) == 0


def _decode_instance(queue: EventQueue) -> Instance:
    profile = build_profile(load_models().get("llama-3-70b"), "H100", 4)
    return Instance("d0", Role.DECODE, ("g0",), profile, KvCache("d0", 500), 512, queue)


def _drain(queue: EventQueue, inst: Instance) -> list[Job]:
    done = []
    while (event := queue.pop()) is not None:
        kind, payload = event
        assert kind is EventKind.EPOCH_END
        done += inst.end_epoch(payload[1])
    return done


def test_one_request_decodes_in_closed_form_time() -> None:
    queue = EventQueue()
    inst = _decode_instance(queue)
    job = Job(request(prompt_tokens=2048, output_tokens=10))
    assert inst.try_reserve(job)
    inst.add_decode(job)
    assert _drain(queue, inst) == [job]
    d = inst.profile.decode
    steps = [d.base_ms + d.per_seq_ms + d.per_token_ms * (2048 + j) for j in range(10)]
    assert job.first_token_s == pytest.approx(steps[0] / 1e3)
    assert job.done_s == pytest.approx(sum(steps) / 1e3)
    assert inst.cache.free == inst.cache.capacity


def test_a_late_request_joins_at_the_next_step_boundary() -> None:
    queue = EventQueue()
    inst = _decode_instance(queue)
    first = Job(request(rid="a", prompt_tokens=1024, output_tokens=50))
    late = Job(request(rid="b", prompt_tokens=1024, output_tokens=5))
    for job in (first, late):
        assert inst.try_reserve(job)
    inst.add_decode(first)
    step = first.first_token_s
    queue.schedule(2.5 * step, EventKind.RETRY)
    event = queue.pop()  # the epoch end is later than 2.5 steps: the marker comes first
    assert event is not None and event[0] is EventKind.RETRY
    inst.add_decode(late)
    done = _drain(queue, inst)
    assert sorted(j.request.id for j in done) == ["a", "b"]
    # joined after the third step of the first request, so its first token follows a step later
    assert late.first_token_s > 3 * step
    assert late.first_token_s < 3 * step + 2 * step
    assert first.done_s > late.done_s
