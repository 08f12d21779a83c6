"""Session-wide real-vLLM fixtures (a pytest plugin, registered in ``tests/conftest.py``).

* ``tiny_model_dir`` — the random-weight checkpoint, written once per session;
* ``vllm_fleet`` — starts engines on demand (``vllm_fleet.start(EngineOptions(...))``),
  holds ``/tmp/toposched-vllm.lock`` while any runs, stops them all at session end;
* ``vllm_pair`` — one prefill and one decode engine with KV events and vLLM's
  NixlConnector (host memory), started once and shared by every test of the session:
  tests must not kill them (start their own engine through ``vllm_fleet`` for that).

Tests that use them are marked ``engine`` (and run in CI; a missing vLLM environment
fails them with the command that installs it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engines.vllm_harness import (
    EngineFleet,
    EngineOptions,
    VllmEngine,
    fleet,
    write_tiny_model,
)


@dataclass(frozen=True)
class VllmPair:
    """A prefill and a decode engine able to hand KV over with NIXL."""

    prefill: VllmEngine
    decode: VllmEngine


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight Llama checkpoint (with tokenizer)."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def vllm_fleet(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[EngineFleet]:
    """Engines started on demand during the session, all stopped at its end."""
    with fleet(tiny_model_dir, tmp_path_factory.mktemp("vllm")) as engines:
        yield engines


@pytest.fixture(scope="session")
def vllm_pair(vllm_fleet: EngineFleet) -> VllmPair:
    """A P/D pair with KV events and NixlConnector, shared by the whole session."""
    prefill, decode = vllm_fleet.start(
        EngineOptions("vllm-prefill", role="prefill", nixl=True),
        EngineOptions("vllm-decode", role="decode", nixl=True))
    return VllmPair(prefill, decode)
