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

A prefill answer of 5xx, a prefill engine that cannot be reached, or an answer without
``kv_transfer_params`` falls back to decode-only on D (D computes the prompt, as
llm-d's sidecar does), and so does a decode leg whose KV read failed (D answers 5xx,
e.g. when P died between the legs); a prefill 4xx is the client's error and passes
through.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engines.instance import is_loopback
from engines.pd.base import (
    EngineEndpoint,
    EngineUnreachableError,
    LegPlan,
    Timeline,
    UpstreamAnswer,
)
from engines.pd.http import EngineHttp
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


class VllmProtocol:
    """NixlConnector pull mode (both engines run ``kv_role: kv_both``)."""

    kind = "vllm"

    async def open(self, client: EngineHttp, plan: LegPlan,
                   timeline: Timeline) -> UpstreamAnswer:
        """Prefill leg (unless decode-only), then the decode leg, streamed."""
        # two legs carry the client's prompt: encode it once
        shared = plan.body if plan.prefill is None else shared_prompt(plan.body)
        body = shared
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


def _equal(a: Any, b: Any) -> bool:
    return a is None or b is None or a == b


def _same_version_class(a: Any, b: Any) -> bool:
    """Same major.minor (NIXL's compatibility hash covers the vLLM version)."""
    if a is None or b is None:
        return True
    return str(a).split(".")[:2] == str(b).split(".")[:2]


PROTOCOL = VllmProtocol()
