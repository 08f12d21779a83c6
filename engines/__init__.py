"""Serving engines (vLLM, SGLang, the built-in fake) as toposched sees them.

* :mod:`engines.instance` — :class:`EngineInstance`, one declared serving instance
  (engine kind, role, model, OpenAI base URL, KV-event endpoint, NIXL side channel or
  bootstrap port, where it sits on the fabric) and the versioned YAML document that
  declares many.

This package sits between the scheduler and the service (topology ← policies ←
scheduler ← engines ← api / sidecar / sim) and is the only importer of ZMQ and msgpack.
"""

from engines.instance import (
    EngineInstance,
    InstanceDocument,
    KvEventsEndpoint,
    load_instances,
    parse_instances,
    parse_instances_text,
    set_issues,
)

__all__ = [
    "EngineInstance",
    "InstanceDocument",
    "KvEventsEndpoint",
    "load_instances",
    "parse_instances",
    "parse_instances_text",
    "set_issues",
]
