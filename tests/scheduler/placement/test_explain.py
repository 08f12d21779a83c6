"""Requests that cannot be met are answered in operator terms; bad input is refused."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.placement import FailureRule, RoleRule, place
from tests.scheduler.placement.builders import request, workload
from topology.errors import InputError, NotFoundError, UnschedulableError


def _reasons(**overrides: Any) -> str:
    with pytest.raises(UnschedulableError) as caught:
        place(request(**overrides))
    text = "; ".join(caught.value.reasons)
    assert "status" not in text.lower()  # never a solver status code
    return text


def test_three_free_gpus_per_domain_cannot_hold_tp4() -> None:
    # Drain GPU 7 of every host: each 8-GPU host keeps one TP-4 group (0-3) plus 3 GPUs.
    # TP 8 then needs 8 GPUs in one domain and the largest has 7.
    hosts = [f"z{z}-p{p}-r{r}-h0{h}/gpu7" for z in range(2) for p in range(2)
             for r in range(2) for h in range(2)]
    text = _reasons(exclude=tuple(hosts), tp_prefill=8, tp_decode=8, prefill=2, decode=2)
    assert "at most 7 free GPUs in one NVLink domain" in text
    assert "TP 8 needs 8" in text


def test_zone_with_too_few_gpus_in_a_domain_is_named() -> None:
    zone1 = [f"z1-p{p}-r{r}-h0{h}/gpu{g}" for p in range(2) for r in range(2)
             for h in range(2) for g in range(3, 8)]
    text = _reasons(exclude=tuple(zone1), prefill=1, decode=1,
                    failure=FailureRule(zone_independent=True))
    assert "zone z1 has at most 3 free GPUs in one NVLink domain" in text
    assert "TP 4 needs 4" in text


def test_decode_capacity_short_by_percent() -> None:
    # 32 TP-4 groups: 10 prefill leave 22 for decode; 25 wanted -> short by 12 %.
    text = _reasons(prefill=10, decode=25)
    assert "decode capacity short by 12 %" in text


def test_prefill_capacity_short_by_percent() -> None:
    text = _reasons(prefill=40, decode=2)
    assert "prefill capacity short by 20 %" in text


def test_all_gpus_drained() -> None:
    assert "all 128 GPUs of the fabric are drained or failed" in _reasons(exclude=("z0", "z1"))


def test_rack_share_too_small_for_the_counts() -> None:
    text = _reasons(failure=FailureRule(max_rack_share=0.05))
    assert "no rack may hold more than 5% of the prefill instances" in text


def test_pins_beyond_the_needed_count() -> None:
    text = _reasons(prefill=1, rules=(RoleRule("z0-p0-r0-h00", "prefill"),))
    assert "8 GPUs are pinned to prefill" in text
    assert "needs only 1" in text


def test_uplink_overload_is_explained() -> None:
    # All prefill in zone z0, all decode in z1: every transfer crosses the zone link,
    # 1.3 GB per request at 1,000 requests/s against 400 GB/s of zone uplink.
    rules = (RoleRule("z1", "prefill", "forbid"), RoleRule("z0", "decode", "forbid"))
    text = _reasons(rules=rules, workload=workload(rate_rps=1000.0))
    assert "uplink" in text


def test_tp_that_divides_no_domain_is_bad_input() -> None:
    with pytest.raises(InputError, match="TP 3 divides no NVLink domain"):
        place(request(tp_prefill=3))


def test_unknown_model_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="llama-3-7b"):
        place(request(workload=workload(model="llama-3-7b")))


@pytest.mark.parametrize("field", ["prefill", "decode"])
def test_non_positive_counts_are_bad_input(field: str) -> None:
    with pytest.raises(InputError, match="at least 1"):
        overrides: dict[str, Any] = {field: 0}
        place(request(**overrides))


def test_unknown_exclusion_target_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="no-such-host"):
        place(request(exclude=("no-such-host",)))
