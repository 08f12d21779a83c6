"""KV caches (LRU, pinning, eviction order, events into the real prefix index), chunked
prefill steps and decode epochs."""

from __future__ import annotations

import pytest

from policies.snapshot import Role
from scheduler.capacity import build_profile
from scheduler.models_config import load_models
from scheduler.prefix import PrefixIndex
from sim.clock import EventKind, EventQueue
from sim.engines import Instance, Job, KvCache
from sim.timing import DecodeCurve, EngineTiming, PrefillCurve, from_profile
from tests.sim.builders import request


def test_cache_reports_stores_and_evictions_to_the_prefix_index() -> None:
    index = PrefixIndex(max_entries=None)
    cache = KvCache("w0", capacity_blocks=4, index=index, eviction="parent-first")
    cache.acquire([1, 2, 3])
    assert index.match([1, 2, 3, 9])["w0"].blocks == 3
    cache.release([1, 2, 3])
    cache.acquire([7, 8])  # 5 blocks > 4: the least recently used (1) goes
    assert cache.match([1, 2]) == 0
    assert index.match([1, 2])["w0"].blocks == 0
    assert index.match([2, 3])["w0"].blocks == 0 or cache.match([2]) == 1
    assert cache.evicted == 1


def test_tail_first_eviction_keeps_the_shared_prefix() -> None:
    # vLLM frees a finished request's blocks tail first: the end of the chain goes
    # before its prefix, so a later request sharing the prefix still hits.
    cache = KvCache("w0", capacity_blocks=4)
    cache.acquire([1, 2, 3])
    cache.release([1, 2, 3])
    cache.acquire([7, 8])
    assert cache.match([1, 2, 3]) == 2
    parent_first = KvCache("w0", capacity_blocks=4, eviction="parent-first")
    parent_first.acquire([1, 2, 3])
    parent_first.release([1, 2, 3])
    parent_first.acquire([7, 8])
    assert parent_first.match([1, 2, 3]) == 0


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


PROFILE = build_profile(load_models().get("llama-3-70b"), "H100", 4)


def _decode_instance(queue: EventQueue, role: Role = Role.DECODE,
                     timing: EngineTiming | None = None) -> Instance:
    return Instance("d0", role, ("g0",), timing or from_profile(PROFILE), KvCache("d0", 500),
                    512, queue)


def _drain(queue: EventQueue, inst: Instance) -> list[Job]:
    done = []
    while (event := queue.pop()) is not None:
        kind, payload = event
        assert kind in (EventKind.EPOCH_END, EventKind.STEP_END)
        end = inst.end_epoch if kind is EventKind.EPOCH_END else inst.end_step
        done += end(payload[1]).done
    return done


def test_one_request_decodes_in_closed_form_time() -> None:
    queue = EventQueue()
    inst = _decode_instance(queue)
    job = Job(request(prompt_tokens=2048, output_tokens=10))
    assert inst.try_reserve(job)
    inst.add_decode(job)
    assert _drain(queue, inst) == [job]
    d = PROFILE.decode
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


# A mocker-like engine: prefill quadratic in the step's new tokens, decode flat.
MOCK = EngineTiming(prefill=PrefillCurve(c0_ms=10.0, c1_ms_per_token=0.01,
                                         c2_ms_per_token_sq=1e-6, squared="batch"),
                    decode=DecodeCurve(base_ms=5.0), max_num_batched_tokens=4096, max_num_seqs=8)


def test_a_long_prompt_is_prefilled_in_chunks_of_the_step_budget() -> None:
    queue = EventQueue()
    inst = _decode_instance(queue, Role.BOTH, MOCK)
    job = Job(request(prompt_tokens=10_000, output_tokens=3), local=True)
    inst.enqueue_prefill(job)
    _drain(queue, inst)
    chunks = [MOCK.prefill.ms([(n, 0)]) for n in (4096, 4096, 1808)]
    assert job.first_token_s == pytest.approx(sum(chunks) / 1e3)  # sampled by the last chunk
    # two more tokens, one decode step each
    assert job.done_s == pytest.approx((sum(chunks) + 2 * 5.0) / 1e3)
    unchunked = MOCK.model_copy(update={"max_num_batched_tokens": None})
    queue = EventQueue()
    inst = _decode_instance(queue, Role.BOTH, unchunked)
    whole = Job(request(prompt_tokens=10_000, output_tokens=3), local=True)
    inst.enqueue_prefill(whole)
    _drain(queue, inst)
    assert whole.first_token_s == pytest.approx(MOCK.prefill.ms([(10_000, 0)]) / 1e3)
    assert whole.first_token_s > job.first_token_s  # quadratic in the step's tokens


def test_several_prefills_share_a_step_and_decodes_ride_along() -> None:
    queue = EventQueue()
    inst = _decode_instance(queue, Role.BOTH, MOCK)
    a = Job(request(rid="a", prompt_tokens=1000, output_tokens=50), local=True)
    inst.enqueue_prefill(a)
    event = queue.pop()
    assert event is not None
    inst.end_step(event[1][1])  # a prefilled: it decodes from now on
    b = Job(request(rid="b", prompt_tokens=1500, output_tokens=2), local=True)
    c = Job(request(rid="c", prompt_tokens=1200, output_tokens=2), local=True)
    start = queue.now()
    queue.schedule(start, EventKind.RETRY)
    queue.pop()
    inst.enqueue_prefill(b)
    inst.enqueue_prefill(c)
    _drain(queue, inst)
    # b and c were admitted together at a's next step boundary: one step carried both
    # prompts and a's decode token.
    assert b.first_token_s == pytest.approx(c.first_token_s)
    step = MOCK.prefill.ms([(1500, 0), (1200, 0)]) + 5.0
    assert b.first_token_s - b.prefill_start_s == pytest.approx(step / 1e3)
    assert a.done_s > b.done_s


def test_a_decode_run_in_closed_form_equals_its_steps_summed() -> None:
    # batch, per-token and utilisation terms (the mocker's curve is quadratic in it)
    timing = EngineTiming(prefill=PrefillCurve(),
                          decode=DecodeCurve(base_ms=5.0, per_seq_ms=0.1, per_token_ms=1e-4,
                                             util_ms=54.0, util_sq_ms=-25.7))
    capacity, batch, active = 400_000, 12, 90_000
    steps = [timing.decode.ms(batch, active + batch * k, capacity) for k in range(300)]
    assert timing.decode_run_ms(300, batch, active, capacity) == pytest.approx(sum(steps))
    per_running, per_token = timing.decode_slopes_s(active, capacity)
    assert per_running == pytest.approx(0.1e-3)
    assert per_token == pytest.approx((1e-4 + (54.0 - 2 * 25.7 * active / capacity) / capacity)
                                      / 1e3)


def test_queued_tokens_count_the_work_left_not_the_prompt() -> None:
    # The router reads queued_tokens as work waiting (a live engine's reservations hold
    # the uncached tokens): cached blocks are not queued, computed chunks leave the queue.
    queue = EventQueue()
    inst = _decode_instance(queue, Role.BOTH, MOCK)
    shared = request(rid="s", prompt_tokens=4096)
    inst.cache.acquire(shared.block_hashes)
    inst.cache.release(shared.block_hashes)
    tail = tuple(range(900, 912))  # 12 more blocks: 6,144 uncached tokens
    job = Job(request(rid="x", prompt_tokens=10_240, output_tokens=2,
                      blocks=shared.block_hashes + tail), local=True)
    inst.enqueue_prefill(job)
    assert inst.queued_tokens == 10_240 - 4096
    event = queue.pop()
    assert event is not None
    inst.end_step(event[1][1])  # one 4,096-token chunk computed
    assert inst.queued_tokens == 10_240 - 4096 - 4096
    _drain(queue, inst)
    assert inst.queued_tokens == 0 and job.prefill_cached == 8
