"""vLLM's NixlConnector pull protocol: prefill leg, then decode leg with the prefill's
``kv_transfer_params`` copied verbatim (../shared/docs/ENGINES.md, "vLLM prefill/decode").

1. Prefill leg to P: the client's body with ``kv_transfer_params`` asking for a remote
   decode (the rest null), ``stream: false``, ``max_tokens: 1`` (and
   ``max_completion_tokens: 1`` when present), ``stream_options``, ``min_tokens`` and
   ``min_completion_tokens`` removed, header ``X-Request-Id`` shared by both legs.
2. P answers with ``kv_transfer_params`` (block ids, engine id, side channel, …): an
   opaque object, never altered — altered block ids give wrong tokens silently or kill
   the decode engine.
3. Decode leg to D: the client's original body plus that object, sent at once (P frees
   the blocks when its lease runs out; a decode leg that would start after the lease
   goes decode-only instead of reading freed blocks).

Prefix copy (a plan's ``pull``: the router's ``Decision.pull``), before the prefill leg,
with the same protocol: vLLM's scheduler puts the blocks a ``do_remote_prefill``
request read over NIXL into its prefix cache once they land
(``Scheduler._update_waiting_for_remote_kv``). So

a. the holder gets the prefix alone (its whole cached blocks, as token ids, on
   ``/v1/completions``) as a prefill leg: ``do_remote_decode``, ``max_tokens: 1`` — a
   prefix-cache hit there (vLLM recomputes the last block of a full hit), and it
   answers ``kv_transfer_params`` for those blocks;
b. the prefill engine gets the same prefix as a decode leg with those parameters,
   ``max_tokens: 1``, not streamed: it reads the blocks it lacks from the holder and
   caches them;
c. the prefill leg (1) then finds the prefix in its cache and computes the rest.

Both copy legs carry the request id plus ``-pull`` (the holder may also be the decode
engine, whose decode leg carries the plain id), and the client's ``cache_salt`` (vLLM
hashes it into the blocks). Any failure of the copy (an engine unreachable, a non-200
answer, no parameters) only skips it: the two legs run as without it; an unreachable
engine is reported like one met on the prefill leg.

A prefill answer of 5xx, a prefill engine that cannot be reached, or an answer without
``kv_transfer_params`` falls back to decode-only on D (D computes the prompt, as
llm-d's sidecar does), and so does a decode leg whose KV read failed (D answers 5xx,
e.g. when P died between the legs); a prefill 4xx is the client's error and passes
through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from engines.instance import is_loopback
from engines.pd.base import (
    EngineEndpoint,
    EngineUnreachableError,
    LegPlan,
    PrefixCopy,
    Timeline,
    UpstreamAnswer,
)
from engines.pd.http import Answer, EngineHttp
from engines.pd.legs import json_object, send, shared_prompt

#: The parameters asking the prefill engine to keep the KV for a remote decode.
PREFILL_KV_PARAMS: Mapping[str, Any] = {
    "do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
    "remote_block_ids": None, "remote_host": None, "remote_port": None}
#: Body fields the prefill leg drops (the decode leg keeps the client's).
PREFILL_DROPS = ("stream_options", "min_tokens", "min_completion_tokens")
#: Seconds kept in hand before the prefill's lease ends: a decode leg starting later
#: might read blocks the prefill engine already freed.
LEASE_MARGIN_S = 1.0
#: Where the prefix copy's legs go (their prompt is token ids), and their request id's
#: suffix.
PULL_PATH = "/v1/completions"
PULL_ID_SUFFIX = "-pull"

log = logging.getLogger(__name__)


def prefill_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The prefill leg's body: compute the prompt, keep its KV for a remote decode."""
    leg = {key: value for key, value in body.items() if key not in PREFILL_DROPS}
    leg["kv_transfer_params"] = dict(PREFILL_KV_PARAMS)
    leg["stream"] = False
    leg["max_tokens"] = 1
    if "max_completion_tokens" in body:
        leg["max_completion_tokens"] = 1
    return leg


def decode_body(body: Mapping[str, Any], kv_transfer_params: Any) -> dict[str, Any]:
    """The decode leg's body: the client's, with the prefill's parameters as given."""
    return {**body, "kv_transfer_params": kv_transfer_params}


def pull_body(body: Mapping[str, Any], token_ids: Sequence[int],
              kv_transfer_params: Any) -> dict[str, Any]:
    """A prefix-copy leg's body: the prefix's token ids alone, one output token."""
    leg: dict[str, Any] = {"model": body.get("model"), "prompt": list(token_ids),
                           "max_tokens": 1, "stream": False,
                           "kv_transfer_params": kv_transfer_params}
    if "cache_salt" in body:
        leg["cache_salt"] = body["cache_salt"]
    return leg


class VllmProtocol:
    """NixlConnector pull mode (both engines run ``kv_role: kv_both``)."""

    kind = "vllm"
    runs_pulls = True

    async def open(self, client: EngineHttp, plan: LegPlan,
                   timeline: Timeline) -> UpstreamAnswer:
        """Prefill leg (unless decode-only), then the decode leg, streamed."""
        # two legs carry the client's prompt: encode it once
        shared = plan.body if plan.prefill is None else shared_prompt(plan.body)
        body = shared
        if plan.prefill is not None and plan.pull is not None:
            await self._pull(client, plan, plan.prefill, plan.pull, timeline)
        if plan.prefill is not None:
            outcome = await self._prefill(client, plan, plan.prefill, shared, timeline)
            if isinstance(outcome, UpstreamAnswer):
                return outcome
            if outcome is not None:
                body = decode_body(shared, outcome)
                timeline.disaggregated = True
                plan.handoff()
        timeline.decode_sent = Timeline.now()
        response = await send(client, plan, plan.decode, body, leg="decode", stream=True)
        if timeline.disaggregated and response.status_code >= 500:
            # The KV could not be read (the prefill engine died between the legs, say):
            # the decode engine can still compute the prompt itself.
            await response.aclose()
            timeline.fallback = (f"decode leg with KV answered {response.status_code}: "
                                 "decode-only")
            timeline.disaggregated = False
            timeline.decode_sent = Timeline.now()
            response = await send(client, plan, plan.decode, shared, leg="decode",
                                  stream=True)
        return UpstreamAnswer(response, timeline)

    async def _prefill(self, client: EngineHttp, plan: LegPlan, engine: EngineEndpoint,
                       body: Mapping[str, Any], timeline: Timeline
                       ) -> Any | UpstreamAnswer | None:
        """The prefill's ``kv_transfer_params`` (``body``: the client's); its answer when
        the client erred (4xx); None for decode-only (reason in ``timeline.fallback``)."""
        timeline.prefill_sent = Timeline.now()
        try:
            response = await send(client, plan, engine, prefill_body(body),
                                  leg="prefill", stream=False)
        except EngineUnreachableError as exc:
            timeline.prefill_done = Timeline.now()
            timeline.unreachable.append(exc.engine)
            timeline.fallback = f"prefill {engine.name} unreachable: decode-only"
            return None
        timeline.prefill_done = Timeline.now()
        if 400 <= response.status_code < 500:
            return UpstreamAnswer(response, timeline)
        if response.status_code >= 500:
            timeline.fallback = f"prefill answered {response.status_code}: decode-only"
            return None
        params = (json_object(response) or {}).get("kv_transfer_params")
        if not params:
            timeline.fallback = "prefill answered without kv_transfer_params: decode-only"
            return None
        if Timeline.now() - timeline.prefill_done > plan.lease_s - LEASE_MARGIN_S:
            timeline.fallback = "prefill lease ran out before the decode leg: decode-only"
            return None
        return params

    async def _pull(self, client: EngineHttp, plan: LegPlan, target: EngineEndpoint,
                    copy: PrefixCopy, timeline: Timeline) -> None:
        """Copy ``copy``'s prefix into ``target``'s prefix cache (module docstring, a-b);
        the outcome goes to ``timeline``, a failure only skips the copy."""
        legs = replace(plan, path=PULL_PATH, request_id=plan.request_id + PULL_ID_SUFFIX)
        timeline.pull_sent = Timeline.now()
        try:
            failure = await self._copy(client, legs, target, copy, timeline)
        finally:
            timeline.pull_done = Timeline.now()
        timeline.pull_outcome = "ok" if failure is None else "failed"
        timeline.pull_failure = failure
        if failure is not None:
            log.warning("prefix copy %s -> %s skipped: %s", copy.holder.name, target.name,
                        failure)

    @staticmethod
    async def _copy(client: EngineHttp, legs: LegPlan, target: EngineEndpoint,
                    copy: PrefixCopy, timeline: Timeline) -> str | None:
        """Run the two copy legs; why it failed (None: the prefix landed)."""
        held = await _pull_leg(client, legs, copy.holder,
                               pull_body(legs.body, copy.token_ids, PREFILL_KV_PARAMS),
                               "pull-holder", timeline)
        if isinstance(held, str):
            return held
        params = (json_object(held) or {}).get("kv_transfer_params")
        if not params:
            return f"holder {copy.holder.name} answered without kv_transfer_params"
        landed = await _pull_leg(client, legs, target,
                                 pull_body(legs.body, copy.token_ids, params),
                                 "pull-target", timeline)
        return landed if isinstance(landed, str) else None

    def can_serve_alone(self, engine: EngineEndpoint) -> bool:
        """Every vLLM engine with ``kv_role: kv_both`` computes prompts itself."""
        return True

    def incompatibility(self, prefill: Any, decode: Any) -> str | None:
        """NIXL's handshake refuses pairs whose model, dtype or vLLM version differ
        (TP may differ); a loopback side channel is out of reach from another host."""
        channel = getattr(prefill, "side_channel", None)
        # host first: is_loopback parses an address, and this runs on every request
        if channel is not None and prefill.host != decode.host and is_loopback(channel[0]):
            return (f"{prefill.name}'s NIXL side channel {channel[0]} is loopback; "
                    f"{decode.name} runs on {decode.host}")
        for field, same in (("model", _equal), ("dtype", _equal),
                            ("engine_version", _same_version_class)):
            a, b = getattr(prefill, field, None), getattr(decode, field, None)
            if not same(a, b):
                return f"{field} differs ({prefill.name}: {a}, {decode.name}: {b})"
        return None


async def _pull_leg(client: EngineHttp, legs: LegPlan, engine: EngineEndpoint,
                    body: Mapping[str, Any], leg: str, timeline: Timeline) -> Answer | str:
    """One copy leg's 200 answer, or why there is none."""
    try:
        answer = await send(client, legs, engine, body, leg=leg, stream=False)
    except EngineUnreachableError as exc:
        timeline.unreachable.append(exc.engine)
        return f"{leg} leg: {engine.name} unreachable"
    if answer.status_code != 200:
        return f"{leg} leg: {engine.name} answered {answer.status_code}"
    return answer


def _equal(a: Any, b: Any) -> bool:
    return a is None or b is None or a == b


def _same_version_class(a: Any, b: Any) -> bool:
    """Same major.minor (NIXL's compatibility hash covers the vLLM version)."""
    if a is None or b is None:
        return True
    return str(a).split(".")[:2] == str(b).split(".")[:2]


PROTOCOL = VllmProtocol()
