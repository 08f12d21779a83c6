"""The decisions ring: bounded by count and by held block hashes, numbered, and shown
without block hashes."""

from __future__ import annotations

from api.ui.decisions import RecentDecisions, decision_view
from scheduler.router.router import Decision, RouteResult, Unschedulable
from tests.scheduler.router.builders import SAME_RAIL, SOURCE, chain, router, snapshot, worker


def _decision(blocks: int = 400, request_id: str = "r1") -> Decision:
    """A disaggregated decision moving ``blocks`` blocks (the prefill side holds them)."""
    workers = [worker("p0", "prefill", SOURCE), worker("d0", "decode", SAME_RAIL)]
    hashes = chain(blocks)
    result = router(cached={"p0": hashes}).route(
        {"request_id": request_id, "block_hashes": hashes}, snapshot(workers))
    assert isinstance(result, Decision) and result.mode == "disaggregated"
    return result


def _refusal(request_id: str = "r1") -> Unschedulable:
    return Unschedulable(request_id=request_id, policy="fabric-cost", reasons=("no decode",))


def _seqs(ring: RecentDecisions, after: int, limit: int) -> tuple[list[int], int]:
    items, skipped = ring.newest(after, limit)
    return [seq for seq, _, _ in items], skipped


def test_keeps_the_newest_results_numbered_in_arrival_order() -> None:
    ring = RecentDecisions(size=8)
    results: list[RouteResult] = [_refusal(f"r{i}") for i in range(1, 21)]
    for result in results:
        ring.add(result)
    assert len(ring) == 8 and ring.added == 20
    assert _seqs(ring, 0, 3) == ([18, 19, 20], 17)
    assert _seqs(ring, 15, 10) == ([16, 17, 18, 19, 20], 0)
    assert _seqs(ring, 20, 10) == ([], 0)
    items, _ = ring.newest(19, 5)
    assert items[0][2] is results[-1]  # the route's own object, not a copy


def test_held_block_hashes_are_bounded() -> None:
    ring = RecentDecisions(size=100, max_hashes=1000)
    big = _decision(blocks=400)
    assert len(big.transfer.block_hashes) == 400
    for _ in range(5):
        ring.add(big)
    assert len(ring) == 2  # 2 x 400 hashes fit in 1000, a third would not
    ring.add(_refusal())
    assert len(ring) == 3  # refusals hold no hashes


def test_the_view_explains_the_choice_without_block_hashes() -> None:
    decision = _decision(blocks=300)
    view = decision_view(7, 1.5, decision)
    assert view["seq"] == 7 and view["request_id"] == "r1"
    assert "block_hashes" not in view["transfer"] and view["transfer"]["blocks"] == 300
    assert view["transfer"]["tier"] == "same_leaf" and view["transfer"]["links"]
    terms = view["estimate"]
    assert terms["total_s"] > 0 and {"queue_s", "prefill_compute_s", "transfer_s",
                                     "admission_s"} <= set(terms)
    assert view["prefill"]["worker"] == "p0" and view["decode"]["worker"] == "d0"
    refused = decision_view(8, 2.0, _refusal())
    assert refused["status"] == "unschedulable" and refused["reasons"] == ["no decode"]
