"""The fast KV-event decoder accepts exactly what ``parse_event`` accepts, with equal fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.prefix.events import parse_event
from scheduler.prefix.wire import decode_event
from topology.errors import ParseError, ValidationError

HASH = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([-1, 2**64, 2**70, 1.0, True, "7",
                                                              None]))
FIELDS: dict[str, Any] = {
    "kind": st.sampled_from(["block_stored", "block_removed", "all_blocks_cleared", "other",
                             1]),
    "worker": st.one_of(st.text(min_size=0, max_size=3), st.just("w" * 257), st.integers()),
    "seq": st.one_of(st.integers(-2, 2**63), st.just(1.5), st.just(False), st.just("3")),
    "block_hashes": st.one_of(st.lists(HASH, max_size=4), st.just("x"), st.just(None)),
    "parent_hash": st.one_of(HASH, st.none()),
    "tier": st.sampled_from(["gpu", "host", "nvme", None]),
    "model": st.one_of(st.none(), st.text(max_size=3), st.just(5)),
    "extra": st.just(1),
}
VALID = st.fixed_dictionaries(
    {"kind": st.sampled_from(["block_stored", "block_removed", "all_blocks_cleared"]),
     "worker": st.text(min_size=1, max_size=3), "seq": st.integers(0, 2**63)},
    optional={"block_hashes": st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4),
              "parent_hash": st.integers(0, 2**64 - 1), "tier": st.sampled_from(["gpu", "host"]),
              "model": st.one_of(st.none(), st.text(max_size=3))})
#: Mostly valid events with one field possibly replaced by anything from FIELDS.
EVENT = st.one_of(
    st.fixed_dictionaries({}, optional=FIELDS),
    st.tuples(VALID, st.sampled_from(sorted(FIELDS)), st.data()).map(
        lambda t: {**t[0], t[1]: t[2].draw(FIELDS[t[1]])}),
    VALID)


def _fields(event: Any) -> dict[str, Any]:
    """The fields an event carries; absent ones read as their defaults."""
    defaults = {"block_hashes": (), "parent_hash": None, "tier": "gpu", "model": None}
    out = {name: getattr(event, name, default) for name, default in defaults.items()}
    return {**out, "kind": event.kind, "worker": event.worker, "seq": event.seq}


def _outcome(function: Any, raw: bytes | str) -> tuple[str, Any]:
    try:
        return "ok", _fields(function(raw))
    except (ParseError, ValidationError) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=400, deadline=None)
@given(body=EVENT)
def test_fast_decoder_agrees_with_parse_event(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    assert _outcome(decode_event, raw) == _outcome(parse_event, raw)


@pytest.mark.parametrize("raw", [
    b"", b"{", b"[1]", b"\xff", b'"text"', b"null",
    b'{"kind": "block_stored", "worker": "w", "seq": 1, "block_hashes": [18446744073709551616]}',
    b'{"kind": "block_stored", "worker": "w", "seq": 1, "block_hashes": [1], '
    b'"parent_hash": 18446744073709551616}',
    b'{"kind": "block_removed", "worker": "w", "seq": 1, "block_hashes": [1, 2.0]}',
    b'{"kind": "block_stored", "worker": "w", "seq": 1, "block_hashes": [18446744073709551615]}',
    b'{"kind": "block_stored", "kind": "block_removed", "worker": "w", "seq": 1, '
    b'"block_hashes": [1]}',
    b'{"worker": "w", "seq": 1, "seq": 2, "block_hashes": [1], "kind": "block_stored"}',
    b'{"worker": "w", "seq": 1, "block_hashes": [1], "kind": "block_stored", "tier": "gpu", '
    b'"tier": "nvme"}',
    b'{"worker": "w", "seq": 1, "block_hashes": [1], "kind": "block_stored"} x',
    b'\xef\xbb\xbf{"worker": "w", "seq": 1, "block_hashes": [1], "kind": "block_stored"}',
    '{"worker": "w\udc80", "seq": 1, "block_hashes": [1], "kind": "block_stored"}',
    '{"worker": "w\u00e9", "seq": 1, "block_hashes": [1], "kind": "block_stored"}',
])
def test_malformed_and_boundary_events_get_the_reference_answer(raw: bytes | str) -> None:
    assert _outcome(decode_event, raw) == _outcome(parse_event, raw)
