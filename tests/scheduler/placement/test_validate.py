"""The validator (no solver import) catches every broken rule in a placement."""

from __future__ import annotations

import subprocess
import sys

from scheduler.placement import Placement, check, place, prepare
from scheduler.placement.result import Pairing
from tests.scheduler.placement.builders import request

_REQUEST = request()


def _placement() -> Placement:
    return place(_REQUEST)


def _broken(placement: Placement, **update: object) -> tuple[str, ...]:
    return check(prepare(_REQUEST), placement.model_copy(update=update))


def test_valid_placement_has_no_violations() -> None:
    assert check(prepare(_REQUEST), _placement()) == ()


def test_shared_gpu_is_caught() -> None:
    placement = _placement()
    first, second = placement.instances[0], placement.instances[1]
    clash = second.model_copy(update={"gpus": first.gpus})
    problems = _broken(placement, instances=(first, clash, *placement.instances[2:]))
    assert any("more than one instance" in p for p in problems)


def test_wrong_tp_size_and_split_domain_are_caught() -> None:
    placement = _placement()
    first, other = placement.instances[0], placement.instances[-1]
    odd = first.model_copy(update={"gpus": (*first.gpus[:3], other.gpus[0])})
    short = placement.instances[1].model_copy(update={"gpus": placement.instances[1].gpus[:2]})
    problems = _broken(placement, instances=(odd, short, *placement.instances[2:]))
    assert any("spans NVLink domains" in p for p in problems)
    assert any("has 2 GPUs" in p for p in problems)


def test_drained_gpu_is_caught() -> None:
    placement = _placement()
    drained = placement.instances[0].gpus[0]
    problems = check(prepare(request(exclude=(drained,))), placement)
    assert any("drained/failed" in p for p in problems)


def test_pairing_weights_must_route_all_traffic() -> None:
    placement = _placement()
    first = placement.pairings[0]
    halved = Pairing(prefill=first.prefill, decode=first.decode, weight=first.weight / 2,
                     tier=first.tier)
    problems = _broken(placement, pairings=(halved, *placement.pairings[1:]))
    assert any("traffic share" in p for p in problems)


def test_missing_instance_is_a_capacity_violation() -> None:
    placement = _placement()
    problems = _broken(placement, instances=placement.instances[1:])
    assert any("needed" in p for p in problems)


def test_validator_does_not_import_the_solver() -> None:
    code = ("import sys; import scheduler.placement.validate; "
            "sys.exit(1 if any(m.startswith('ortools') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
