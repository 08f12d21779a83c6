"""Cabling checks: one switch port per NIC, one NIC per GUID, one rail per leaf.

A switch port is cabled to one NIC, and a NIC GUID belongs to one NIC; when two hosts
claim the same one, an input was given for the wrong host (the same LLDP capture or
NCCL dump for two hosts is the usual slip). Claims are collected while a fabric is
built; :meth:`ClaimRegistry.conflicts` names every double claim.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, computed_field

from topology.spec import FabricSpec, HostSpec


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


# -- rails -----------------------------------------------------------------------------------

class RailBreak(BaseModel):
    """A NIC cabled to a leaf of another rail: host, NIC, switch and port named."""

    model_config = ConfigDict(frozen=True)
    host: str
    nic: str
    rail: int = Field(description="the NIC's rail: the GPU it serves (or its position)")
    leaf: str
    port: str | None
    leaf_rail: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def message(self) -> str:
        """The break as one sentence (what ``topo build`` warns)."""
        where = f"{self.leaf} port {self.port}" if self.port else self.leaf
        return (f"rail break: host {self.host} NIC {self.nic} (rail {self.rail}) is cabled "
                f"to {where}, a rail-{self.leaf_rail} leaf")

    def __str__(self) -> str:
        return self.message


def rail_keys(host: HostSpec) -> dict[str, int]:
    """Each NIC's rail on its host: the GPU it serves (the lowest, if it serves several);
    NICs that serve no GPU have none. Hosts whose GPUs name no NIC (template-only) number
    their NICs by position."""
    served = [gpu.nic for gpu in host.gpus if gpu.nic is not None]
    if not served:
        return {nic.device: i for i, nic in enumerate(host.nics)}
    keys: dict[str, int] = {}
    for gpu in host.gpus:
        if gpu.nic is not None:
            keys.setdefault(gpu.nic, gpu.index)
    return keys


def rail_breaks(spec: FabricSpec) -> list[RailBreak]:
    """Every NIC whose leaf is a rail leaf of another rail, hosts in fabric order."""
    leaf_rail = {leaf.name: leaf.rail for leaf in spec.leaves if leaf.rail is not None}
    found = []
    for host in spec.hosts:
        keys = rail_keys(host)
        for nic in host.nics:
            rail, key = leaf_rail.get(nic.leaf or ""), keys.get(nic.device)
            if rail is not None and key is not None and rail != key:
                found.append(RailBreak(host=host.name, nic=nic.device, rail=key,
                                       leaf=nic.leaf or "", port=nic.port, leaf_rail=rail))
    return found


def discover_rails(attached: Mapping[str, Sequence[tuple[str, int | None]]]) -> dict[str, int]:
    """Rail per leaf when the fabric is rail-optimised.

    ``attached[leaf]`` lists (host, rail key) of every NIC landing on the leaf. A leaf is
    rail *k* when most of its NICs (more than half) have key *k*, at least two hosts land
    on it, and each of those hosts spreads its NICs over several leaves; the NICs of
    another key there are rail breaks (:func:`rail_breaks`), not a reason to lose the
    rail.
    """
    leaves_per_host: dict[str, set[str]] = defaultdict(set)
    for leaf, users in attached.items():
        for host, _ in users:
            leaves_per_host[host].add(leaf)
    rails = {}
    for leaf, users in attached.items():
        keys = Counter(key for _, key in users if key is not None)
        hosts = {host for host, _ in users}
        if not keys or len(hosts) < 2 or any(len(leaves_per_host[h]) < 2 for h in hosts):
            continue
        key, count = keys.most_common(1)[0]
        if 2 * count > len(users):
            rails[leaf] = key
    return rails
