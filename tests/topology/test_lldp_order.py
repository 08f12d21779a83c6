"""lldpctl keyvalue lines out of order (issue 11 item 13): interleaved interfaces and
shuffled lines give the same neighbours, never duplicated partial ones."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topology.lldp import parse_lldp

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lldp"
KV = [path for path in sorted(FIXTURES.glob("*.kv")) if path.name != "bad_line.kv"]


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _interface(line: str) -> str:
    return line.split(".", 2)[1]


def _unordered(text: str) -> list[dict[str, object]]:
    """The neighbours, with list values as sets: a shuffle reorders the lines of a
    list (management addresses), and with them which address comes first."""
    found = []
    for neighbour in parse_lldp(text).neighbors:
        data = neighbour.model_dump(exclude={"mgmt_ip"})
        data["mgmt_ips"] = sorted(data["mgmt_ips"])
        found.append(data)
    return found


@pytest.mark.parametrize("path", KV, ids=lambda p: p.name)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_shuffled_lines_give_the_same_neighbours(path: Path, seed: int) -> None:
    """One neighbour per interface here, so any order of the lines tells them apart."""
    lines = _lines(path)
    expected = _unordered("\n".join(lines))
    random.Random(seed).shuffle(lines)
    assert _unordered("\n".join(lines)) == expected


@pytest.mark.parametrize("path", KV, ids=lambda p: p.name)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_interleaved_interfaces_keep_each_interfaces_order(path: Path, seed: int) -> None:
    """Several neighbours on one interface are told apart by lldpd's order, which an
    interleaving of interfaces (concatenated or pasted output) keeps."""
    lines = _lines(path)
    twice = lines + [line.replace("chassis.mac=", "chassis.mac=02:") for line in lines]
    expected = parse_lldp("\n".join(twice)).neighbors
    queues: dict[str, list[str]] = {}
    for line in twice:
        queues.setdefault(_interface(line), []).append(line)
    rng, mixed = random.Random(seed), []
    while queues:
        name = rng.choice(sorted(queues))
        mixed.append(queues[name].pop(0))
        if not queues[name]:
            del queues[name]
    assert parse_lldp("\n".join(mixed)).neighbors == expected


def test_fragments_never_become_neighbours_of_their_own() -> None:
    """A shuffle of two neighbours on one interface can split lines from their chassis:
    the count stays at the number of chassis (4 neighbours once became 30)."""
    lines = _lines(FIXTURES / "rail_host.kv")
    lines += [line.replace("chassis.mac=", "chassis.mac=02:") for line in lines]
    for seed in range(30):
        random.Random(seed).shuffle(lines)
        found = parse_lldp("\n".join(lines)).neighbors
        per_interface: dict[str, int] = {}
        for neighbour in found:
            per_interface[neighbour.interface] = per_interface.get(neighbour.interface, 0) + 1
            assert neighbour.chassis_id is not None
        assert len(found) <= 18 and max(per_interface.values()) <= 2
