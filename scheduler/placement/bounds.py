"""Costs on the locality tree and an analytic lower bound on the transfer cost.

On the tree (see :mod:`.problem`), a placement's total cost in unit·ms is

    cost = c(root)·T − Σ_v (c(parent v) − c(v)) · m_v,    m_v = min(S_v, D_v),

where ``T = P·D`` units flow in all, ``S_v`` / ``D_v`` are the prefill supply and decode
demand below node ``v`` and ``m_v`` the traffic that can stay below it. The analytic
bound treats each level of the tree on its own: ``m_v ≤ min(n_p·D, n_d·P)`` for the
instance counts ``n_p``, ``n_d`` that ``v``'s free GPUs can hold, the counts over the
level's nodes sum to at most ``P`` and ``D`` (dualised, see
:func:`_level_saving_bound`), and the traffic kept below one level is at most ``T``. It
holds for every placement, on the tree costs.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import numpy.typing as npt

from scheduler.placement.problem import LEVELS, Problem

FloatArray = npt.NDArray[np.float64]
#: Dual prices: a grid of _GRID × _GRID, zoomed in _ZOOMS times around the best point.
_GRID = 21
_ZOOMS = 5


def deltas(problem: Problem) -> list[float]:
    """Per node: how much cheaper (ms/request) a transfer kept below it is than its parent's."""
    nodes = problem.nodes
    return [nodes[n.parent].cost_ms - n.cost_ms if n.parent >= 0 else 0.0 for n in nodes]


def root_cost(problem: Problem) -> float:
    """ms/request of a transfer that meets only at the top of the tree."""
    return max(n.cost_ms for n in problem.nodes)


def tree_cost_ms(problem: Problem, kept: dict[int, int]) -> float:
    """Mean ms/request on the tree, given units ``kept`` below each node."""
    total = problem.prefill * problem.decode
    delta = deltas(problem)
    return root_cost(problem) - sum(delta[v] * m for v, m in kept.items()) / total


def analytic_bound_ms(problem: Problem) -> float:
    """A lower bound on the mean transfer ms/request of any feasible placement."""
    total = problem.prefill * problem.decode
    delta = deltas(problem)
    free = _free_gpus_per_node(problem)
    saved = 0.0
    for level in LEVELS:
        nodes = [n.index for n in problem.nodes if n.level == level and delta[n.index] > 0]
        if nodes:
            best = max(delta[v] for v in nodes) * total
            saved += min(best, _level_saving_bound(problem, nodes, delta, free))
    return max(0.0, root_cost(problem) - saved / total)


def _level_saving_bound(problem: Problem, nodes: list[int], delta: list[float],
                        free: dict[int, int]) -> float:
    """Lagrangian bound on Σ δ_v·kept_v over one level's nodes.

    Dualising the instance counts (Σ n_p ≤ P with price λ, Σ n_d ≤ D with price μ)
    separates the nodes; every (λ, μ) gives a valid bound, and the smallest found on a
    zooming grid is kept. Nodes with equal (free GPUs, δ) are priced once.
    """
    shapes = Counter((free.get(v, 0), round(delta[v], 9)) for v in nodes)
    top = max(delta[v] for v in nodes)
    span = [(0.0, top * problem.decode), (0.0, top * problem.prefill)]
    best = math.inf
    for _ in range(_ZOOMS):
        lam = np.linspace(*span[0], _GRID)[:, None] * np.ones(_GRID)[None, :]
        mu = np.ones(_GRID)[:, None] * np.linspace(*span[1], _GRID)[None, :]
        bound = lam * problem.prefill + mu * problem.decode
        for (gpus, weight), count in shapes.items():
            bound = bound + count * _node_dual(problem, gpus, weight, lam, mu)
        i, j = np.unravel_index(int(bound.argmin()), bound.shape)
        best = min(best, float(bound[i, j]))
        span = [_around(span[0], int(i)), _around(span[1], int(j))]
    return best


def _around(span: tuple[float, float], index: int) -> tuple[float, float]:
    """The part of ``span`` two grid steps either side of ``index`` (the next zoom)."""
    step = (span[1] - span[0]) / (_GRID - 1)
    return (max(0.0, span[0] + (index - 2) * step), span[0] + (index + 2) * step)


def _node_dual(problem: Problem, gpus: int, weight: float, lam: FloatArray,
               mu: FloatArray) -> FloatArray:
    """max over (n_p, n_d) of δ·min(n_p·D, n_d·P) − λ·n_p − μ·n_d, for each (λ, μ)."""
    n_p, n_d = _options(problem, gpus)
    kept = weight * np.minimum(n_p * problem.decode, n_d * problem.prefill)
    value = kept[None, None, :] - lam[..., None] * n_p - mu[..., None] * n_d
    result: FloatArray = value.max(axis=-1)
    return result


def _options(problem: Problem, gpus: int) -> tuple[FloatArray, FloatArray]:
    """(n_p, n_d) pairs worth considering: for each n_p, no decode or the balancing counts."""
    tp_p, tp_d = problem.request.tp_prefill, problem.request.tp_decode
    n_p = np.arange(0, min(problem.prefill, gpus // tp_p) + 1, dtype=np.float64)
    room = np.minimum(problem.decode, (gpus - n_p * tp_p) // tp_d)
    balance = n_p * problem.decode / problem.prefill
    choices = [np.zeros_like(n_p), np.minimum(room, np.floor(balance)),
               np.minimum(room, np.ceil(balance)), room]
    return np.tile(n_p, len(choices)), np.concatenate(choices)


def _free_gpus_per_node(problem: Problem) -> dict[int, int]:
    """Free GPUs below each node, counted in whole groups of the smaller TP per domain."""
    tp = min(problem.request.tp_prefill, problem.request.tp_decode)
    free: dict[int, int] = {}
    domain_chain = {c.domain: problem.chains[c.index] for c in problem.candidates}
    for d, chain in domain_chain.items():
        usable = len(problem.domains[d].free) // tp * tp
        for node in chain:
            free[node] = free.get(node, 0) + usable
    return free
