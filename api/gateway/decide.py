"""The gateway's decision: which engines run a request, and whether KV moves at all.

The service's decision path (:func:`api.decide.decide`: the router with the app's prefix
index, fabric cost model and the placement's pairings) picks the (prefill, decode) pair
over the engine instances in routing, with their load. Then, as llm-d's prefix-based
decider does, the request runs **decode-only** when the decode engine already holds all but
fewer than ``min_uncached_tokens`` of the prompt (moving KV would cost more than
computing the rest), when the router itself chose a local prefill, or when the pair
cannot hand KV over (different engine kinds, models, dtypes or version classes; then
the runners-up are tried first). An instance of role ``both`` is a prefill and a
decode candidate at once; chosen for both sides it runs the request **aggregated**.

A decision that pulls a prefix (``Decision.pull``, with ``--prefix-pull``) becomes a
:class:`~engines.pd.PrefixCopy` for the legs (:func:`prefix_copy`) when the route still
prefills on the pull's target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from api.routing import Fabric
from engines.instance import EngineInstance
from engines.pd import PrefixCopy, protocol_for
from scheduler.router.router import Decision, Unschedulable

Mode = Literal["disaggregated", "decode-only", "aggregated"]
LOCAL = "local"
#: An instance by name (None: not registered).
Lookup = Callable[[str], EngineInstance | None]


@dataclass(frozen=True)
class Route:
    """Where one request runs, and why (the ``x-toposched-*`` headers say the same)."""

    mode: Mode
    decode: EngineInstance
    prefill: EngineInstance | None
    tier: str
    reason: str
    prompt_tokens: int
    decode_cached_tokens: int
    decision: Decision

    block_tokens: int
    #: The fixed cost the router priced the decision's pull with (``decision.pull``).
    pull_overhead_s: float = 0.0

    @property
    def uncached_tokens(self) -> int:
        """Prompt tokens the engine that computes the prompt does not hold."""
        side = self.decision.prefill if self.prefill is not None else self.decision.decode
        return max(self.prompt_tokens - side.cached_blocks * self.block_tokens, 0)


class PairChooser:
    """Turns the router's decision into the route a request runs (see module docstring)."""

    def __init__(self, min_uncached_tokens: int) -> None:
        """``min_uncached_tokens``: the conditional-disaggregation threshold."""
        self.min_uncached_tokens = min_uncached_tokens

    def choose(self, decision: Decision, named: Lookup, fabric: Fabric,
               candidates: Callable[[], Sequence[EngineInstance]], prompt_tokens: int,
               block_tokens: int) -> Route | Unschedulable:
        """The route of ``decision``: ``named`` finds an instance by name,
        ``candidates`` lists the instances of the model in routing (asked only when a
        decode engine that cannot run alone needs another prefill)."""
        route = self._route(decision, named, prompt_tokens, block_tokens)
        if isinstance(route, Route) and route.prefill is None and \
                not protocol_for(route.decode.engine).can_serve_alone(route.decode):
            return self._pair_anyway(fabric, route, candidates())
        return route

    @staticmethod
    def _pair_anyway(fabric: Fabric, route: Route, instances: Sequence[EngineInstance]
                     ) -> Route | Unschedulable:
        """A decode engine that cannot run alone (an SGLang decode server) gets the
        nearest compatible prefill even when the router preferred no transfer."""
        decode = route.decode
        options = [i for i in instances if i.can_prefill and i.name != decode.name
                   and pair_problem(i, decode) is None]
        if not options:
            return Unschedulable(request_id=route.decision.request_id, policy="gateway",
                                 reasons=(f"{decode.name} needs a prefill engine and no "
                                          "compatible one is in routing",))
        costs = [fabric.distance.pair(i.gpu_names[0], decode.gpu_names[0]) for i in options]
        best = min(range(len(options)), key=lambda k: (costs[k].tier, costs[k].latency_us))
        tier = costs[best].tier.label
        return replace(route, mode="disaggregated", prefill=options[best], tier=tier,
                       reason=f"{decode.name} cannot run alone: nearest prefill "
                              f"{options[best].name} ({tier})")

    def _route(self, decision: Decision, named: Lookup, prompt_tokens: int,
               block_tokens: int) -> Route | Unschedulable:
        decode = named(decision.decode.worker)
        prefill = named(decision.prefill.worker)
        if decode is None or prefill is None:  # deregistered since the snapshot
            return Unschedulable(request_id=decision.request_id, policy=decision.policy,
                                 reasons=("the chosen instances were deregistered; retry",))
        d_cached = min(decision.decode.cached_blocks * block_tokens, prompt_tokens)
        alone = protocol_for(decode.engine).can_serve_alone(decode)
        if prefill.name == decode.name:
            mode: Mode = "aggregated" if decode.role == "both" else "decode-only"
            return Route(mode, decode, None, LOCAL, "the router chose a local prefill "
                         f"(decode holds {d_cached} of {prompt_tokens} prompt tokens)",
                         prompt_tokens, d_cached, decision, block_tokens)
        if alone and prompt_tokens - d_cached < self.min_uncached_tokens:
            return Route("decode-only", decode, None, LOCAL,
                         f"decode holds {d_cached} of {prompt_tokens} prompt tokens "
                         f"(threshold {self.min_uncached_tokens} uncached)",
                         prompt_tokens, d_cached, decision, block_tokens)
        problem = pair_problem(prefill, decode)
        if problem is None:
            return Route("disaggregated", decode, prefill, decision.transfer.tier,
                         f"prefill on {prefill.name} ({decision.transfer.tier})",
                         prompt_tokens, d_cached, decision, block_tokens)
        partner = _compatible_runner_up(decision, named, decode)
        if partner is not None:
            return Route("disaggregated", decode, partner, decision.transfer.tier,
                         f"runner-up prefill {partner.name}: {problem}", prompt_tokens,
                         d_cached, decision, block_tokens)
        if alone:
            return Route("decode-only", decode, None, LOCAL, f"no compatible prefill: {problem}",
                         prompt_tokens, d_cached, decision, block_tokens)
        return Unschedulable(request_id=decision.request_id, policy=decision.policy,
                             reasons=(f"no compatible prefill for {decode.name}: {problem}",))


def pair_problem(prefill: EngineInstance, decode: EngineInstance) -> str | None:
    """Why ``prefill`` cannot hand KV to ``decode`` (None: it can)."""
    if prefill.engine != decode.engine:
        return f"engine kinds differ ({prefill.engine}, {decode.engine})"
    return protocol_for(decode.engine).incompatibility(prefill, decode)


def _compatible_runner_up(decision: Decision, named: Lookup, decode: EngineInstance
                          ) -> EngineInstance | None:
    for option in decision.runners_up:
        candidate = named(option.prefill)
        if option.decode == decode.name and not option.local_prefill \
                and candidate is not None and pair_problem(candidate, decode) is None:
            return candidate
    return None


def prefix_copy(route: Route, token_ids: Sequence[int], named: Lookup
                ) -> PrefixCopy | str | None:
    """The prefix copy ``route`` runs before its prefill leg; None when its decision
    pulls nothing or the route no longer prefills on the pull's target (decode-only, a
    runner-up); why not when it cannot run (the reason, for the metrics)."""
    pull = route.decision.pull
    target = route.prefill
    if pull is None or target is None or target.name != pull.target:
        return None
    holder = named(pull.source)
    if holder is None:
        return f"holder {pull.source} not registered"
    if holder.name == target.name:
        return "the holder is the prefill engine"
    if holder.engine != target.engine or not protocol_for(target.engine).runs_pulls:
        return f"{holder.engine} -> {target.engine}: no prefix copy protocol"
    problem = pair_problem(holder, target)
    if problem is not None:
        return problem
    blocks = route.decision.prefill.cached_blocks + pull.blocks
    tokens = blocks * route.block_tokens
    if len(token_ids) < tokens:
        return "the prompt's token ids are unknown"
    return PrefixCopy(holder, tuple(token_ids[:tokens]), blocks)
