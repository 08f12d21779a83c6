"""Every policy answers "can't place" with reasons, and malformed requests with InputError."""

from __future__ import annotations

import pytest

from policies.profile import policy_names
from scheduler.router.router import Decision, Unschedulable
from tests.scheduler.router.builders import SAME_RAIL, SOURCE, chain, router, snapshot, worker
from topology.errors import InputError

POLICIES = policy_names()


@pytest.mark.parametrize("name", POLICIES)
def test_no_decode_with_free_kv_blocks(name: str) -> None:
    snap = snapshot([worker("p", "prefill", SOURCE),
                     worker("d", "decode", SAME_RAIL, free_kv_blocks=1)])
    result = router(name).route({"block_hashes": chain(6)}, snap)
    assert isinstance(result, Unschedulable) and result.reasons
    assert result.policy == name


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("side", ["prefill_worker", "decode_worker"])
def test_unknown_pinned_worker(name: str, side: str) -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    result = router(name).route({"block_hashes": chain(2), side: "ghost"}, snap)
    assert isinstance(result, Unschedulable)
    assert "unknown worker 'ghost'" in result.reasons[0]


@pytest.mark.parametrize("name", POLICIES)
def test_no_decode_worker_at_all(name: str) -> None:
    snap = snapshot([worker("p", "prefill", SOURCE)])
    result = router(name).route({"block_hashes": chain(2)}, snap)
    assert isinstance(result, Unschedulable)
    assert "no decode worker" in result.reasons[0]


@pytest.mark.parametrize("name", POLICIES)
def test_empty_snapshot(name: str) -> None:
    result = router(name).route({"block_hashes": chain(2)}, snapshot([]))
    assert isinstance(result, Unschedulable)


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_places_a_plain_request(name: str) -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    result = router(name).route({"block_hashes": chain(3), "request_id": "x"}, snap)
    assert isinstance(result, Decision) and result.request_id == "x"


@pytest.mark.parametrize("request_data", [
    {},                                                     # no prompt
    {"block_hashes": [1], "token_ids": [1]},                # both
    {"block_hashes": [-1]},                                 # not u64
    {"block_hashes": ["1"]},                                # not an int
    {"block_hashes": [1, 2, 3], "prompt_tokens": 16},       # 3 blocks cannot fit 16 tokens
    {"block_hashes": [1], "colour": "red"},                 # unknown field
])
def test_malformed_requests_raise_input_error(request_data: dict[str, object]) -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    with pytest.raises(InputError):
        router().route(request_data, snap)


def test_token_ids_are_hashed_into_blocks() -> None:
    snap = snapshot([worker("p", "prefill", SOURCE), worker("d", "decode", SAME_RAIL)])
    result = router("least-loaded").route({"token_ids": list(range(40))}, snap)
    assert isinstance(result, Decision)
    assert result.transfer.blocks == 2      # two full 16-token blocks; the tail is unhashed
    assert result.estimate.transfer_bytes == 40 * 327_680
