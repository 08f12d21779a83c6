"""The fallback heuristic: fill each NVLink domain with the workload's prefill:decode mix.

Domains are visited in fabric order (zone, pod, rack, host), so consecutive domains are
close. Pinned GPUs are served first, then instances of the current placement that still
fit are kept (so after a failure the heuristic is a low-churn repair). Each domain
then gets prefill and decode instances in the proportion the remaining counts ask for
(by GPUs, so mixed TP sizes work), which keeps most KV inside the domain; the pairing
(see :mod:`.pairing`) then matches inside the domain, the rack and the pod before
anything crosses an uplink.
"""

from __future__ import annotations

import math
from collections import Counter

from scheduler.placement.problem import ROLES, Candidate, Problem
from scheduler.placement.result import Role


def greedy(problem: Problem) -> dict[int, Role] | None:
    """Roles for candidates (candidate index -> role), or None when counts are not met."""
    return _Greedy(problem).run()


class _Greedy:
    def __init__(self, problem: Problem) -> None:
        self.p = problem
        self.used: set[int] = set()
        self.roles: dict[int, Role] = {}
        self.rack_count: Counter[tuple[int, Role]] = Counter()
        self.by_domain: dict[int, list[Candidate]] = {}
        for cand in problem.candidates:
            self.by_domain.setdefault(cand.domain, []).append(cand)

    def run(self) -> dict[int, Role] | None:
        """Pins, kept instances, then the per-rack fill; None if the counts are not met."""
        self._pins()
        self._keep_current()
        quotas = self._quotas()
        for zone, left in quotas.items():
            domains = [d for d, dom in enumerate(self.p.domains)
                       if zone is None or dom.zone == zone]
            for rack, share in self._rack_shares(domains, left).items():
                # Roomiest domains first: a prefill and its decodes then share one.
                in_rack = sorted((d for d in domains if self.p.domains[d].rack == rack),
                                 key=lambda d: -self._unused(d))
                for d in in_rack:
                    if any(share.values()):
                        self._fill(d, share, left)
            for d in domains:  # what the per-rack shares could not place
                if any(left.values()):
                    self._fill(d, dict(left), left)
        counts = Counter(self.roles.values())
        if counts["prefill"] != self.p.prefill or counts["decode"] != self.p.decode:
            return None
        return self.roles

    def _quotas(self) -> dict[int | None, dict[Role, int]]:
        placed = Counter(self.roles.values())
        if self.p.zone_quota is None:
            return {None: {"prefill": self.p.prefill - placed["prefill"],
                           "decode": self.p.decode - placed["decode"]}}
        zone_of = {c: self.p.domains[self.p.candidates[c].domain].zone for c in self.roles}
        out: dict[int | None, dict[Role, int]] = {}
        for z, (pre, dec) in self.p.zone_quota.items():
            here = Counter(role for c, role in self.roles.items() if zone_of[c] == z)
            out[z] = {"prefill": max(0, pre - here["prefill"]),
                      "decode": max(0, dec - here["decode"])}
        return out

    def _pins(self) -> None:
        for role in ROLES:
            for g in sorted(self.p.pins[role]):
                if g in self.used:
                    continue
                for cand in self.p.candidates:
                    if g in cand.gpus and self._fits(cand, role):
                        self._take(cand, role)
                        break

    def _keep_current(self) -> None:
        """Keep instances of the current placement that still fit (a repair, low churn)."""
        limit = {"prefill": self.p.prefill, "decode": self.p.decode}
        for current in self.p.current:
            if current.candidate is None:
                continue
            placed = Counter(self.roles.values())
            cand = self.p.candidates[current.candidate]
            if placed[current.role] < limit[current.role] and self._fits(cand, current.role):
                self._take(cand, current.role)

    def _rack_shares(self, domains: list[int],
                     left: dict[Role, int]) -> dict[int, dict[Role, int]]:
        """Split the counts over racks in proportion to their unused free GPUs, down the
        tree (zone, pod, rack) so that every level stays balanced."""
        free: dict[tuple[int, ...], int] = {}
        for d in domains:
            dom = self.p.domains[d]
            path = (dom.zone, dom.pod, dom.rack)
            unused = self._unused(d)
            for depth in range(1, 4):
                free[path[:depth]] = free.get(path[:depth], 0) + unused
        shares: dict[tuple[int, ...], dict[Role, int]] = {(): dict(left)}
        for depth in range(1, 4):
            for key in [k for k in free if len(k) == depth]:
                parent = shares[key[:-1]]
                siblings = {k: v for k, v in free.items()
                            if len(k) == depth and k[:-1] == key[:-1]}
                shares[key] = {role: _apportion(parent[role], siblings)[key] for role in ROLES}
        return {key[2]: share for key, share in shares.items() if len(key) == 3}

    def _unused(self, d: int) -> int:
        return sum(g not in self.used for g in self.p.domains[d].free)

    def _fill(self, d: int, share: dict[Role, int], left: dict[Role, int]) -> None:
        """Give domain ``d`` instances in the proportion ``share`` still asks for."""
        free = sum(len(c.gpus) for c in self._disjoint_free(d))
        tp = self.p.tp
        want = share["prefill"] * tp["prefill"] + share["decode"] * tp["decode"]
        ratio = share["prefill"] * tp["prefill"] / want if want else 0.0
        prefill = min(share["prefill"], round(free * ratio / tp["prefill"]))
        decode = min(share["decode"], (free - prefill * tp["prefill"]) // tp["decode"])
        # The larger groups go first: smaller ones then fill the gaps instead of
        # breaking up the room a larger group needs.
        wanted: dict[Role, int] = {"prefill": prefill, "decode": decode}
        for role in sorted(ROLES, key=lambda r: -tp[r]):
            self._take_n(d, role, wanted[role], share, left)
        for role in sorted(ROLES, key=lambda r: -tp[r]):
            self._take_n(d, role, share[role], share, left)

    def _disjoint_free(self, d: int) -> list[Candidate]:
        seen: set[int] = set(self.used)
        out = []
        for cand in self.by_domain.get(d, []):
            if not seen & set(cand.gpus):
                out.append(cand)
                seen |= set(cand.gpus)
        return out

    def _take_n(self, d: int, role: Role, count: int, share: dict[Role, int],
                left: dict[Role, int]) -> None:
        for cand in self.by_domain.get(d, []):
            if count <= 0 or left[role] <= 0:
                return
            if self._fits(cand, role):
                self._take(cand, role)
                count -= 1
                share[role] -= 1
                if share is not left:
                    left[role] -= 1

    def _fits(self, cand: Candidate, role: Role) -> bool:
        if role not in cand.roles or self.used & set(cand.gpus):
            return False
        share = self.p.request.failure.max_rack_share
        if share is None:
            return True
        total = self.p.prefill if role == "prefill" else self.p.decode
        rack = self.p.domains[cand.domain].rack
        return self.rack_count[(rack, role)] < math.floor(share * total + 1e-9)

    def _take(self, cand: Candidate, role: Role) -> None:
        self.roles[cand.index] = role
        self.used |= set(cand.gpus)
        self.rack_count[(self.p.domains[cand.domain].rack, role)] += 1


def _apportion(total: int, weights: dict[tuple[int, ...], int]) -> dict[tuple[int, ...], int]:
    """Largest-remainder split of ``total`` in proportion to ``weights``."""
    whole = sum(weights.values()) or 1
    exact = {k: total * w / whole for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (out[k] - exact[k], k))[:total - sum(out.values())]:
        out[k] += 1
    return out
