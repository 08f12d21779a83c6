"""SGLang's bootstrap protocol (../shared/docs/ENGINES.md, "SGLang prefill/decode").

The same body goes to the prefill and the decode server at once, with three fields
added: ``bootstrap_host`` (the prefill's address, from its URL), ``bootstrap_port`` (its
``--disaggregation-bootstrap-port``) and ``bootstrap_room`` (a random 63-bit integer
naming this transfer; with DP the decode side finds the prefill rank as
``room % dp_size``). The engines meet in the room and move the KV themselves; the
client gets the decode server's answer. A prefill that fails before the decode server
answers ends the decode leg too (it would wait for KV that never comes) and its error
is returned; a prefill that cannot be reached is reported so the gateway can route
again without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from engines.pd.base import (
    EngineEndpoint,
    EngineUnreachableError,
    LegPlan,
    Timeline,
    UpstreamAnswer,
)
from engines.pd.http import Answer, EngineHttp
from engines.pd.legs import send, shared_prompt

#: SGLang's default ``--disaggregation-bootstrap-port``.
DEFAULT_BOOTSTRAP_PORT = 8998
ROOM_BITS = 63


def bootstrap_body(body: Mapping[str, Any], prefill: EngineEndpoint,
                   room: int) -> dict[str, Any]:
    """The body both legs carry: the client's plus the bootstrap fields."""
    port = getattr(prefill, "bootstrap_port", None) or DEFAULT_BOOTSTRAP_PORT
    return {**body, "bootstrap_host": bootstrap_host(prefill), "bootstrap_port": port,
            "bootstrap_room": room}


def bootstrap_host(prefill: EngineEndpoint) -> str:
    """The address the decode server reaches the prefill's bootstrap server on: the
    host of its OpenAI URL (its fabric ``host`` name need not resolve)."""
    return urlsplit(prefill.base_url).hostname or prefill.host


def new_room() -> int:
    """A random bootstrap room in [0, 2^63 − 1]."""
    return random.getrandbits(ROOM_BITS)


class SglangProtocol:
    """``--disaggregation-mode prefill|decode`` servers (Mooncake or NIXL transfer)."""

    kind = "sglang"
    runs_pulls = False  # bootstrap rooms carry no prefix copy

    async def open(self, client: EngineHttp, plan: LegPlan,
                   timeline: Timeline) -> UpstreamAnswer:
        """Both legs at once; the decode answer, streamed (decode-only without P)."""
        if plan.prefill is None:
            timeline.decode_sent = Timeline.now()
            response = await send(client, plan, plan.decode, plan.body, leg="decode",
                                  stream=True)
            return UpstreamAnswer(response, timeline)
        # the two legs' bodies are the same: encode the prompt once
        body = shared_prompt(bootstrap_body(plan.body, plan.prefill, new_room()))
        plan.handoff()
        timeline.prefill_sent = timeline.decode_sent = Timeline.now()
        prefill = asyncio.create_task(self._prefill(client, plan, plan.prefill, body, timeline))
        decode = asyncio.create_task(send(client, plan, plan.decode, body, leg="decode",
                                          stream=True))
        try:
            failed = await _prefill_failed_first(prefill, decode)
        except BaseException:
            await _cancel(prefill, decode)
            raise
        if failed is not None:
            await _cancel(decode)
            return UpstreamAnswer(failed, timeline)
        timeline.disaggregated = True
        return UpstreamAnswer(decode.result(), timeline, companions=(prefill,))

    @staticmethod
    async def _prefill(client: EngineHttp, plan: LegPlan, engine: EngineEndpoint,
                       body: Mapping[str, Any], timeline: Timeline) -> Answer:
        try:
            return await send(client, plan, engine, body, leg="prefill", stream=False)
        except EngineUnreachableError as exc:
            timeline.unreachable.append(exc.engine)
            raise
        finally:
            timeline.prefill_done = Timeline.now()

    def can_serve_alone(self, engine: EngineEndpoint) -> bool:
        """Only a server without ``--disaggregation-mode`` (role ``both``) runs whole
        requests; a decode-mode server waits for a prefill's KV."""
        return engine.role == "both"

    def incompatibility(self, prefill: Any, decode: Any) -> str | None:
        """Same model and dtype; a prefill needs a bootstrap port."""
        for field in ("model", "dtype"):
            a, b = getattr(prefill, field, None), getattr(decode, field, None)
            if a is not None and b is not None and a != b:
                return f"{field} differs ({prefill.name}: {a}, {decode.name}: {b})"
        return None


async def _prefill_failed_first(prefill: asyncio.Task[Answer],
                                decode: asyncio.Task[Answer]) -> Answer | None:
    """Wait for the decode answer; a prefill error that comes first is returned (an
    unreachable prefill raises)."""
    pending: set[asyncio.Task[Answer]] = {prefill, decode}
    while decode in pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if prefill in done:
            response = prefill.result()  # raises EngineUnreachableError
            if response.status_code >= 400:
                return response
    return None


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            response = await task
            if isinstance(response, Answer):
                await response.aclose()


PROTOCOL = SglangProtocol()
