"""Leg plumbing shared by the engine kinds: send one leg, translate transport errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any

import msgspec

from engines.pd.base import EngineEndpoint, EngineUnreachableError, LegPlan
from engines.pd.http import Answer, EngineHttp, TransportError

_ENCODER = msgspec.json.Encoder()
#: The body fields that hold the prompt: most of a leg's bytes.
PROMPT_FIELDS = ("prompt", "messages")


def encode(body: Mapping[str, Any]) -> bytes:
    """A JSON body as engines expect it (UTF-8, compact): msgspec's encoder (a leg's body
    holds the whole prompt; ~10× faster than ``json``), ``json`` for what msgspec cannot
    write (integers past 64 bits). Values :func:`shared_prompt` encoded already go in as
    they are."""
    try:
        return _ENCODER.encode(body)
    except (msgspec.EncodeError, OverflowError, TypeError):
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                          default=_raw_value).encode()


def _raw_value(value: Any) -> Any:
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def shared_prompt(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """``body`` with its prompt fields encoded once, for bodies of several legs built
    from it: each leg's :func:`encode` then copies those bytes instead of encoding the
    prompt again (~8 µs a 1,024-token prompt), and writes the same bytes as it would
    from ``body``. A field msgspec cannot write stays as it is."""
    shared = dict(body)
    for name in PROMPT_FIELDS:
        if name in shared:
            with contextlib.suppress(msgspec.EncodeError, OverflowError, TypeError):
                shared[name] = msgspec.Raw(_ENCODER.encode(shared[name]))
    return shared


def describe(exc: TransportError) -> str:
    """A transport failure in a few words, without the request's content."""
    kind = type(exc).__name__
    text = str(exc)
    return f"{kind}: {text}" if text else kind


async def send(client: EngineHttp, plan: LegPlan, engine: EngineEndpoint,
               body: Mapping[str, Any], *, leg: str, stream: bool) -> Answer:
    """POST ``body`` to ``engine`` at the plan's path; an unreachable engine raises
    :class:`EngineUnreachableError` (a streamed answer's body stays unread, any other is
    read whole)."""
    try:
        answer = await client.post(plan.url(engine), encode(body), plan.leg_headers())
        if not stream:
            await answer.read()
    except TransportError as exc:
        raise EngineUnreachableError(engine.name, leg, describe(exc)) from exc
    return answer


def json_object(response: Answer) -> dict[str, Any] | None:
    """The answer's JSON object, or None when it is not one."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
