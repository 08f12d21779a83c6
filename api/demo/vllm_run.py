"""The requests of ``toposched demo --engines vllm`` and what each one shows.

Requests run one at a time through the gateway, so each one's figures can be read as
differences of running totals: the gateway's ``toposched_gateway_phase_seconds`` sums
(prefill leg, handoff gap, decode time to first byte; docs/gateway.md) and the decode
engine's own NIXL counters (``vllm:nixl_bytes_transferred``,
``vllm:nixl_xfer_time_seconds``): bytes that grew there were read by the decode engine
from the prefill engine with NIXL, the proof that the KV moved.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from api.demo.vllm_stack import VllmStack
from engines.launch import KV_BYTES_PER_TOKEN, MODEL_NAME, VllmEngine
from engines.metrics import NixlTotals, parse_metrics, samples_of

PHASES = ("prefill", "handoff", "decode_ttft")
#: How long figures may take to show after an answer ends (the gateway records a
#: request when its response is done; vLLM counts a transfer at its next step).
SETTLE_S = 10.0
REQUEST_TIMEOUT_S = 180.0
_SENTENCE = "a gateway routes each request to a prefill engine and a decode engine. "
_CHAT = "the decode engine reads the prompt's KV cache from the prefill engine over NIXL. "


@dataclass(frozen=True)
class DemoRequest:
    """One request of the demo: what it shows, where it goes, its body."""

    label: str
    path: str
    body: dict[str, Any]


def demo_requests() -> list[DemoRequest]:
    """A completion and a streamed chat with fresh prompts (both disaggregated), then the
    completion's prompt again with a few more words: the decode engine now holds its
    prefix, so computing the rest there beats moving KV (conditional disaggregation)."""
    prompt = "[demo] " + _SENTENCE * 9
    greedy = {"temperature": 0.0, "max_tokens": 16}
    return [
        DemoRequest("completion", "/v1/completions",
                    {"model": MODEL_NAME, "prompt": prompt, **greedy}),
        DemoRequest("chat, streamed", "/v1/chat/completions",
                    {"model": MODEL_NAME, "stream": True, **greedy,
                     "messages": [{"role": "user", "content": _CHAT * 8}]}),
        DemoRequest("completion, same prefix", "/v1/completions",
                    {"model": MODEL_NAME, "prompt": prompt + "once more.", **greedy}),
    ]


@dataclass(frozen=True)
class RequestResult:
    """What one request did (times in ms; None: that phase did not happen)."""

    label: str
    status: int
    mode: str
    prefill: str
    decode: str
    tier: str
    reason: str
    prompt_tokens: int
    total_ms: float
    first_byte_ms: float
    prefill_ms: float | None
    handoff_ms: float | None
    decode_ttft_ms: float | None
    nixl_transfers: int
    nixl_ms: float
    nixl_bytes: int
    prompt_kv_bytes: int

    def as_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        return asdict(self)


@dataclass(frozen=True)
class _Totals:
    """Running totals read before and after a request."""

    requests: float
    phase_sums: dict[str, float]
    phase_counts: dict[str, float]
    nixl: NixlTotals


def _totals(stack: VllmStack) -> _Totals:
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    sums: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    counts: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    requests = 0.0
    for name, labels, value in samples_of(text, ("toposched_gateway_phase_seconds",
                                                 "toposched_gateway_requests")):
        phase = labels.get("phase", "")
        if name == "toposched_gateway_phase_seconds_sum" and phase in sums:
            sums[phase] += value
        elif name == "toposched_gateway_phase_seconds_count" and phase in counts:
            counts[phase] += value
        elif name == "toposched_gateway_requests_total":
            requests += value
    return _Totals(requests, sums, counts, _nixl(stack.decode))


def _nixl(engine: VllmEngine) -> NixlTotals:
    return parse_metrics(engine.get("/metrics").text, "vllm").nixl or NixlTotals()


def run_request(stack: VllmStack, client: httpx.Client, request: DemoRequest) -> RequestResult:
    """Send ``request`` through the gateway (alone) and measure it."""
    before = _totals(stack)
    started = time.perf_counter()
    first_byte = None
    with client.stream("POST", stack.url + request.path, json=request.body,
                       timeout=REQUEST_TIMEOUT_S) as answer:
        for _ in answer.iter_raw():
            first_byte = first_byte or time.perf_counter()
        headers, status = answer.headers, answer.status_code
    total = time.perf_counter() - started
    after = _settled(stack, before, moved=headers.get("x-toposched-mode") == "disaggregated")
    return _result(request, status, headers, before, after, total,
                   (first_byte or started + total) - started)


def _settled(stack: VllmStack, before: _Totals, *, moved: bool) -> _Totals:
    """Totals once the gateway has recorded the request (and, when KV moved, the decode
    engine has counted its transfer)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        after = _totals(stack)
        recorded = after.requests > before.requests
        counted = not moved or after.nixl.transfers > before.nixl.transfers
        if (recorded and counted) or time.monotonic() > deadline:
            return after
        time.sleep(0.1)


def _result(request: DemoRequest, status: int, headers: httpx.Headers, before: _Totals,
            after: _Totals, total_s: float, first_byte_s: float) -> RequestResult:
    def phase_ms(phase: str) -> float | None:
        if after.phase_counts[phase] <= before.phase_counts[phase]:
            return None
        return (after.phase_sums[phase] - before.phase_sums[phase]) * 1e3

    prompt_tokens = int(headers.get("x-toposched-prompt-tokens", "0"))
    return RequestResult(
        label=request.label, status=status, mode=headers.get("x-toposched-mode", "-"),
        prefill=headers.get("x-toposched-prefill", "-"),
        decode=headers.get("x-toposched-decode", "-"),
        tier=headers.get("x-toposched-tier", "-"),
        reason=headers.get("x-toposched-reason", ""), prompt_tokens=prompt_tokens,
        total_ms=total_s * 1e3, first_byte_ms=first_byte_s * 1e3,
        prefill_ms=phase_ms("prefill"), handoff_ms=phase_ms("handoff"),
        decode_ttft_ms=phase_ms("decode_ttft"),
        nixl_transfers=int(after.nixl.transfers - before.nixl.transfers),
        nixl_ms=(after.nixl.seconds - before.nixl.seconds) * 1e3,
        nixl_bytes=int(after.nixl.bytes - before.nixl.bytes),
        prompt_kv_bytes=prompt_tokens * KV_BYTES_PER_TOKEN)
