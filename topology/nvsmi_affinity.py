"""Affinity fields of ``nvidia-smi topo -m`` GPU rows, and the token shapes they take.

After its link cells a GPU row carries up to three fields: CPU Affinity (a cpulist
such as ``0-47,96-143``), NUMA Affinity (a node or, on Grace, a node list) and GPU
NUMA ID. Empty fields vanish when tabs turn into spaces, so the fields are read
from the tab layout when it survived and otherwise assigned to the header's columns
by the shapes of the tokens. Part of :mod:`topology.nvsmi`, which is the public entry.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from topology.errors import Location, ParseError

#: A matrix line of MAX_DEVICES columns stays far below this; longer lines are not rows.
MAX_LINE_CHARS = 65_536
#: Linux NR_CPUS tops out at 8192; leave room without letting a cpulist explode.
MAX_CPU_ID = 65_535
MAX_NUMA_ID = 4_095

_AFFINITY_EXPECTED = "a CPU list such as 0-47,96-143, a NUMA node number or list, or N/A"


def is_uint(token: str, digits: int = 9) -> bool:
    """Tell whether ``token`` is a plain ASCII unsigned number of at most ``digits`` digits."""
    return 0 < len(token) <= digits and token.isascii() and token.isdigit()


def _list_ranges(token: str) -> list[tuple[int, int]] | None:
    """Split a cpulist/nodelist such as ``0-47,96-143`` into ranges; None if not one."""
    if len(token) > MAX_LINE_CHARS:
        return None
    ranges: list[tuple[int, int]] = []
    for piece in token.split(","):
        low, dash, high = piece.partition("-")
        if not is_uint(low) or (dash and not is_uint(high)):
            return None
        ranges.append((int(low), int(high) if dash else int(low)))
    return ranges


def _cost_cpu(token: str) -> int | None:
    if token == "N/A":
        return 1
    ranges = _list_ranges(token)
    if ranges is None:
        return None
    # A single CPU is a rare affinity; a lone number is more likely a NUMA node.
    return 0 if len(ranges) > 1 or ranges[0][0] != ranges[0][1] else 1


def _cost_numa(token: str) -> int | None:
    if token == "N/A" or is_uint(token):
        return 0
    # Several NUMA nodes happen only on Grace; a list is more likely a cpulist.
    return 1 if _list_ranges(token) is not None else None


def _cost_gpu_numa(token: str) -> int | None:
    return 0 if token == "N/A" or is_uint(token) else None


_COSTS: dict[str, Callable[[str], int | None]] = {
    "cpu": _cost_cpu, "numa": _cost_numa, "gpu_numa": _cost_gpu_numa}
#: The GPU NUMA ID column always prints a value (N/A on x86); the others may be empty.
_EMPTY_COST = {"cpu": 1, "numa": 1, "gpu_numa": 2}


def affinity_shaped(token: str) -> bool:
    """Tell whether ``token`` looks like an affinity value (a list or N/A), not a cell."""
    return token == "N/A" or _list_ranges(token) is not None


def _fits(values: dict[str, str]) -> bool:
    return all(not value or _COSTS[kind](value) is not None for kind, value in values.items())


def assign_affinity(text: str, extras: Sequence[str], name: str, count: int,
                    kinds: Sequence[str], where: Location) -> dict[str, str]:
    """Assign the fields after a GPU row's ``count`` cells to the affinity columns ``kinds``."""
    exact = _tab_fields(text, count, kinds)
    if exact is not None and _fits(exact):
        return exact
    return _guess_fields(extras, name, kinds, where)


def _tab_fields(text: str, count: int, kinds: Sequence[str]) -> dict[str, str] | None:
    """Read affinity fields from nvidia-smi's exact tab layout; None when it was lost.

    Only the complete layout is trusted: a row that lost one tab can still have a
    plausible number of fields, with its values shifted into the wrong columns.
    """
    if "\t" not in text:
        return None
    fields = [field.strip() for field in text.split("\t")]
    while fields and not fields[0]:
        fields.pop(0)
    tail = fields[count + 1:]
    if len(fields) < count + 1 or any(len(f.split()) != 1 for f in fields[:count + 1]) \
            or any(len(field.split()) > 1 for field in tail):
        return None
    # nvidia-smi prints an empty field before GPU NUMA ID on GPU rows.
    filler = len(kinds) - 1 if "gpu_numa" in kinds else None
    if filler is not None and len(tail) == len(kinds) + 1 and not tail[filler]:
        del tail[filler]
    elif filler is not None or len(tail) != len(kinds):
        return None
    return dict(zip(kinds, tail, strict=True))


def _guess_fields(extras: Sequence[str], name: str, kinds: Sequence[str],
                  where: Location) -> dict[str, str]:
    """Assign tokens to columns by their shapes when empty fields have collapsed."""
    if len(extras) > len(kinds):
        raise ParseError(f"row {name} has {len(extras)} field(s) after its cells but the header "
                         f"names {len(kinds)} affinity column(s)", where,
                         "at most one value per affinity column")
    best: tuple[int, dict[str, str]] | None = None
    for slots in itertools.combinations(range(len(kinds)), len(extras)):
        chosen = dict(zip((kinds[slot] for slot in slots), extras, strict=True))
        cost = _assignment_cost(kinds, chosen)
        if cost is not None and (best is None or cost < best[0]):
            best = (cost, {kind: chosen.get(kind, "") for kind in kinds})
    if best is None:
        raise ParseError(f"cannot read {' '.join(extras)[:80]!r} as the affinity of row {name}",
                         where, _AFFINITY_EXPECTED)
    return best[1]


def _assignment_cost(kinds: Sequence[str], chosen: dict[str, str]) -> int | None:
    """Score one way of filling the affinity columns; None when a token cannot fit."""
    cost = 0
    for kind in kinds:
        fit = _COSTS[kind](chosen[kind]) if kind in chosen else _EMPTY_COST[kind]
        if fit is None:
            return None
        cost += fit
    return cost


def expand_ids(token: str, limit: int, what: str, where: Location) -> list[int]:
    """Expand a validated list such as ``0-3,8`` into sorted ids, bounded by ``limit``."""
    ranges = _list_ranges(token) or []
    for low, high in ranges:
        if low > high or high > limit:
            raise ParseError(f"{what} {token[:80]!r} has the range {low}-{high}", where,
                             f"ascending ranges of ids up to {limit}")
    # Overlapping ranges could otherwise expand far beyond the id space.
    if sum(high - low + 1 for low, high in ranges) > limit + 1:
        raise ParseError(f"{what} {token[:80]!r} lists more ids than exist", where,
                         f"at most {limit + 1} ids without repeats")
    return sorted({n for low, high in ranges for n in range(low, high + 1)})
