"""P/D request legs, one module per engine kind (``engines/pd/<kind>.py`` exposing
``PROTOCOL``): :func:`protocol_for` finds it by the instance's ``engine`` field, so a new
kind is one new module and no branch in the gateway."""

from __future__ import annotations

import importlib
import re
from functools import cache

from engines.pd.base import (
    EngineEndpoint,
    EngineUnreachableError,
    LegPlan,
    PdProtocol,
    PrefixCopy,
    Timeline,
    UpstreamAnswer,
)
from topology.errors import NotFoundError

__all__ = ["EngineEndpoint", "EngineUnreachableError", "LegPlan", "PdProtocol", "PrefixCopy",
           "Timeline", "UpstreamAnswer", "protocol_for"]
_KIND = re.compile(r"^[a-z][a-z0-9_]*$")


@cache
def protocol_for(kind: str) -> PdProtocol:
    """The P/D protocol of engine ``kind`` (``vllm``, ``sglang``, ``fake``, …)."""
    if not _KIND.match(kind) or kind in ("base", "legs"):
        raise NotFoundError("engine kind", kind, "expected e.g. vllm, sglang or fake")
    try:
        module = importlib.import_module(f"engines.pd.{kind}")
    except ModuleNotFoundError as exc:
        raise NotFoundError("engine kind", kind, "no P/D protocol module for it") from exc
    protocol: PdProtocol = module.PROTOCOL
    return protocol
