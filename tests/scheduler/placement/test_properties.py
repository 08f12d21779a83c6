"""Property: any request is either placed validly or refused with reasons."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.placement import SolverOptions, check, place, prepare
from tests.scheduler.placement.builders import request
from tests.topology.builders import small_fabric
from topology.errors import UnschedulableError

_FABRIC = small_fabric(zones=2, pods_per_zone=1, racks_per_pod=1, hosts_per_rack=2)
_GPUS = [f"z{z}-p0-r0-h0{h}/gpu{g}" for z in range(2) for h in range(2) for g in range(8)]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tp=st.sampled_from([(2, 2), (2, 4), (4, 4), (4, 2)]),
       prefill=st.integers(1, 8), decode=st.integers(1, 8),
       drained=st.lists(st.sampled_from(_GPUS), max_size=10, unique=True))
def test_placed_validly_or_refused_with_reasons(tp: tuple[int, int], prefill: int,
                                                decode: int, drained: list[str]) -> None:
    req = request(fabric=_FABRIC, tp_prefill=tp[0], tp_decode=tp[1], prefill=prefill,
                  decode=decode, exclude=tuple(drained),
                  options=SolverOptions(time_limit_s=0.3))
    try:
        placement = place(req)
    except UnschedulableError as exc:
        assert exc.reasons and all(reason.strip() for reason in exc.reasons)
        return
    assert check(prepare(req), placement) == ()
    used = {gpu for instance in placement.instances for gpu in instance.gpus}
    assert not used & set(drained)
    assert placement.objective.transfer_cost_ms >= placement.lower_bound_ms * (1 - 1e-9)
