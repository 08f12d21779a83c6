"""Builders of engine-side domain objects for tests (keyword defaults, no lifetimes)."""

from __future__ import annotations

from typing import Any

from engines.instance import EngineInstance


def instance_data(name: str = "p0", **overrides: Any) -> dict[str, Any]:
    """A valid vLLM prefill instance as plain data, with fields replaced by ``overrides``."""
    data: dict[str, Any] = {
        "name": name, "engine": "vllm", "role": "prefill", "model": "tiny-llama",
        "base_url": "http://127.0.0.1:8100", "host": "h0", "gpus": [0],
        "nixl_side_channel": "10.0.0.1:5600",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def instance(name: str = "p0", **overrides: Any) -> EngineInstance:
    """A validated :class:`EngineInstance` (see :func:`instance_data`)."""
    return EngineInstance.model_validate(instance_data(name, **overrides))
