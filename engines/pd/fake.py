"""The built-in fake engine (:mod:`engines.fakes`) speaks vLLM's NixlConnector protocol
unless started as an SGLang fake (then its instances say ``engine: sglang``)."""

from __future__ import annotations

from engines.pd.vllm import VllmProtocol


class FakeProtocol(VllmProtocol):
    """vLLM's pull protocol under the kind name ``fake``."""

    kind = "fake"


PROTOCOL = FakeProtocol()
