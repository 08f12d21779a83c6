"""Cabling checks: one switch port per NIC, one NIC per GUID.

A switch port is cabled to one NIC, and a NIC GUID belongs to one NIC; when two hosts
claim the same one, an input was given for the wrong host (the same LLDP capture or
NCCL dump for two hosts is the usual slip). Claims are collected while a fabric is
built; :meth:`ClaimRegistry.conflicts` names every double claim.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Claim:
    """A host saying it holds something unique: a switch port or a NIC GUID."""

    host: str
    local: str
    """Where on the host: an interface, an RDMA device."""
    nic: str | None = None
    """The RDMA device the claim is about, when known."""
    source: str = ""


@dataclass
class ClaimRegistry:
    """Switch ports and GUIDs claimed by hosts while a fabric is built."""

    ports: dict[tuple[str, str], list[Claim]] = field(default_factory=lambda: defaultdict(list))
    guids: dict[str, list[Claim]] = field(default_factory=lambda: defaultdict(list))

    def port(self, switch: str, port: str, claim: Claim) -> None:
        """``claim.host`` reaches ``switch`` port ``port``."""
        self.ports[(switch, port)].append(claim)

    def guid(self, guid: str, claim: Claim) -> None:
        """``claim.host`` holds a NIC with this GUID."""
        self.guids[normal_guid(guid)].append(claim)

    def conflicts(self) -> list[str]:
        """Every switch port and GUID claimed twice: one sentence per set of claimants,
        listing what they share (a capture given for two hosts shares all of it)."""
        ports = _grouped({f"{switch} {port}": claims
                          for (switch, port), claims in self.ports.items()})
        guids = _grouped(self.guids)
        return ([f"switch port(s) {shared} reached by {who}: a port is cabled to one NIC "
                 "(the same LLDP capture given for two hosts?)" for who, shared in ports]
                + [f"NIC GUID(s) {shared} claimed by {who}: a GUID belongs to one NIC "
                   "(the same capture given for two hosts?)" for who, shared in guids])


def _grouped(claimed: dict[str, list[Claim]]) -> list[tuple[str, str]]:
    """(claimants, what they share) for every key claimed twice, grouped by claimants."""
    groups: dict[str, list[str]] = defaultdict(list)
    for key, claims in claimed.items():
        if _double(claims):
            groups[_claimants(claims)].append(key)
    return [(who, _listed(keys)) for who, keys in groups.items()]


def _listed(keys: list[str], shown: int = 4) -> str:
    head = ", ".join(keys[:shown])
    return head if len(keys) <= shown else f"{head} … ({len(keys)} in all)"


def normal_guid(guid: str) -> str:
    """A GUID as ``0x`` and 16 lower-case hex digits (``1c34:da03:…`` and ``0x1C34…`` agree)."""
    digits = guid.strip().lower().removeprefix("0x").replace(":", "")
    return "0x" + digits.rjust(16, "0")


def _double(claims: list[Claim]) -> bool:
    """Claimed by two hosts, or by two different NICs of one host."""
    hosts = {claim.host for claim in claims}
    if len(hosts) > 1:
        return True
    nics = {claim.nic for claim in claims if claim.nic is not None}
    return len(nics) > 1


def _claimants(claims: list[Claim]) -> str:
    seen = dict.fromkeys(f"{c.host} ({c.local}{f', {c.source}' if c.source else ''})"
                         for c in claims)
    return " and ".join(seen)
