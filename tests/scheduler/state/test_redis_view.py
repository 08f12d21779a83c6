"""The listing view applies change-log answers: plain data in, no Redis needed."""

from __future__ import annotations

from typing import Any

from scheduler.state.redis_view import ListingView, Registrations, Row, SyncAnswer
from scheduler.transfer.plan import WorkerRegistration
from tests.scheduler.transfer.builders import registration

REGS = Registrations()
RIDS = {name: REGS.parse(registration(name).model_dump_json())[0] for name in ("a", "b")}


def row(name: str, *, epoch: int | None = 1, expires: float = 100.0, used: int = 0,
        tokens: int | None = None, rid: str | None = None, draining: bool = False) -> Row:
    """A worker of 8 blocks (``epoch=None``: its hash is gone), a load when ``tokens``."""
    alive = epoch is not None
    return Row(name, rid or RIDS.get(name) if alive else None, str(epoch) if alive else None,
               "10.0" if alive else None, repr(expires) if alive else None,
               "8" if alive else None, used if alive else None,
               None if tokens is None else str(tokens), None if tokens is None else "1",
               None if tokens is None else "100", None if tokens is None else "4",
               None, "1" if alive and draining else None)


def answer(seq: int, *rows: Row, full: bool = False, view: str = "v1") -> SyncAnswer:
    """A parsed ``SYNC`` answer."""
    return SyncAnswer(view, seq, full, rows)


def resolve(r: Row) -> WorkerRegistration | None:
    """Registrations parsed before, by id (None: not known yet)."""
    return REGS.get(r.rid or "")


def frees(view: ListingView, now: float = 0.0) -> dict[str, int]:
    return {e.registration.name: e.free_blocks for e in view.listing(now)}


def test_the_script_reply_parses_into_rows() -> None:
    flat: list[Any] = ["a", "rid", "2", "10.0", "99.5", "8", 3, "5", "1", "100", "4", "6",
                       "1", "700"]
    parsed = SyncAnswer.parse(["v1", 7, 1, *flat, "gone", *[None] * 13])
    assert (parsed.view_id, parsed.seq, parsed.full) == ("v1", 7, True)
    assert parsed.rows[0] == Row(*flat)
    assert (parsed.rows[0].draining, parsed.rows[0].context) == ("1", "700")
    assert parsed.rows[1].name == "gone" and parsed.rows[1].epoch is None
    assert parsed.unresolved(REGS) == ["a"]  # its rid was never parsed here


def test_a_delta_patches_a_full_view_and_keeps_unchanged_objects() -> None:
    view = ListingView()
    view.apply(answer(5, row("a"), row("b", tokens=0), full=True), resolve)
    before, loads = view.listing(0.0), view.loads_by_name()
    view.apply(answer(7, row("b", used=2, tokens=30)), resolve)
    after = view.listing(0.0)
    assert frees(view) == {"a": 8, "b": 6} and view.loads_by_name()["b"].tokens == 30
    assert after[0] is before[0] and after[1].lease is before[1].lease
    assert loads["b"] is not view.loads_by_name()["b"]


def test_a_row_marked_draining_gives_a_draining_entry_and_a_new_one_without() -> None:
    view = ListingView()
    view.apply(answer(5, row("a"), full=True), resolve)
    before = view.listing(0.0)[0]
    view.apply(answer(6, row("a", draining=True)), resolve)
    draining = view.listing(0.0)[0]
    assert not before.draining and draining.draining and draining.lease is before.lease
    view.apply(answer(7, row("a", epoch=2)), resolve)  # registered again: no field
    assert not view.listing(0.0)[0].draining


def test_older_answers_and_deltas_of_a_replaced_view_are_ignored() -> None:
    view = ListingView()
    view.apply(answer(5, row("a"), full=True), resolve)
    view.apply(answer(9, row("a", used=3)), resolve)
    view.apply(answer(8, row("a", used=1)), resolve)  # overtaken by seq 9
    assert frees(view) == {"a": 5}
    view.apply(answer(2, row("b"), full=True, view="v2"), resolve)  # Redis restarted
    view.apply(answer(10, row("a", used=7)), resolve)  # a delta against view v1
    assert frees(view) == {"b": 8} and (view.view_id, view.seq) == ("v2", 2)


def test_gone_workers_and_loads_drop_out_and_a_full_answer_replaces_everything() -> None:
    view = ListingView()
    view.apply(answer(1, row("a", tokens=5), row("b", tokens=0), full=True), resolve)
    view.apply(answer(2, row("a", epoch=None)), resolve)
    assert frees(view) == {"b": 8} and list(view.loads_by_name()) == ["b"]
    view.apply(answer(3, row("a"), full=True), resolve)
    assert frees(view) == {"a": 8} and view.loads_by_name() == {}


def test_expired_leases_leave_the_listing_by_the_clock() -> None:
    view = ListingView()
    view.apply(answer(1, row("a", expires=50.0), row("b", expires=100.0), full=True), resolve)
    assert list(frees(view, 10.0)) == ["a", "b"]
    assert list(frees(view, 50.0)) == ["b"]
    view.apply(answer(2, row("a", expires=150.0)), resolve)  # a heartbeat in time
    assert list(frees(view, 60.0)) == ["a", "b"]


def test_a_worker_whose_registration_is_not_known_yet_keeps_its_entry() -> None:
    view = ListingView()
    view.apply(answer(1, row("a"), full=True), resolve)
    known = view.listing(0.0)[0]
    view.apply(answer(2, row("a", epoch=2, rid="unparsed")), resolve)
    assert view.listing(0.0)[0] is known
    view.apply(answer(3, row("a", epoch=2, rid="unparsed"), full=True), resolve)
    assert view.listing(0.0)[0] is known
