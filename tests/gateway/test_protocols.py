"""Unit tests of the P/D protocol modules and the gateway's decision rules (no processes)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from api.gateway.decide import PairChooser, Route, pair_problem
from api.gateway.relay import parse_body
from engines.instance import EngineInstance
from engines.pd import protocol_for
from engines.pd.legs import encode, shared_prompt
from engines.pd.sglang import ROOM_BITS, bootstrap_body, new_room
from engines.pd.vllm import PREFILL_KV_PARAMS, decode_body, prefill_body
from scheduler.router.router import Decision, Side, Transfer
from topology.errors import NotFoundError, ValidationError


def _instance(name: str, role: str = "both", **extra: Any) -> EngineInstance:
    return EngineInstance.model_validate({
        "name": name, "engine": "vllm", "role": role, "model": "m",
        "base_url": f"http://10.0.0.{len(name)}:8000", "host": "h0", "gpus": [0], **extra})


def test_vllm_prefill_leg_body() -> None:
    body = {"model": "m", "prompt": "hi", "stream": True, "max_tokens": 50,
            "max_completion_tokens": 50, "stream_options": {"include_usage": True},
            "min_tokens": 5, "min_completion_tokens": 5, "temperature": 0.3}
    original = copy.deepcopy(body)
    leg = prefill_body(body)
    assert leg == {"model": "m", "prompt": "hi", "stream": False, "max_tokens": 1,
                   "max_completion_tokens": 1, "temperature": 0.3,
                   "kv_transfer_params": dict(PREFILL_KV_PARAMS)}
    assert body == original  # the client's body is untouched for the decode leg
    assert "max_completion_tokens" not in prefill_body({"model": "m", "prompt": "x"})


def test_vllm_decode_leg_carries_the_parameters_verbatim() -> None:
    params = {"do_remote_prefill": True, "remote_block_ids": [[3, 9, 27], []],
              "remote_engine_id": "e", "remote_host": "10.0.0.5", "remote_port": 5600,
              "tp_size": 2, "future_field": {"nested": [1.5, None]}}
    body = {"model": "m", "prompt": "hi", "min_tokens": 5, "stream": True}
    leg = decode_body(body, params)
    assert leg["kv_transfer_params"] is params
    assert {k: v for k, v in leg.items() if k != "kv_transfer_params"} == body


_PARAMS = {"do_remote_prefill": True, "remote_block_ids": [[3, 9, 27]], "remote_port": 5600,
           "remote_engine_id": "é", "x": 1.5}


@pytest.mark.parametrize("body", [
    {"model": "m", "prompt": list(range(1024)), "stream": True, "max_tokens": 8,
     "stream_options": {"include_usage": True}, "temperature": 0.25},
    {"model": "m", "prompt": "naïve \u2028 \"text\"", "max_completion_tokens": 9},
    {"model": "m", "messages": [{"role": "user", "content": "héllo 🙂"}], "stream": False},
    {"model": "m", "prompt": [1, 1 << 70, 3]},  # msgspec cannot write it: left as is
    {"model": "m", "prompt": [5, 6], "seed": 1 << 70},  # the body falls back to json
    {"model": "m", "prompt": [7], "kv_transfer_params": {"client": 1}}])
def test_vllm_legs_with_the_prompt_encoded_once_send_the_same_bytes(
        body: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    shared = shared_prompt(body)
    assert encode(prefill_body(shared)) == encode(prefill_body(body))
    assert encode(decode_body(shared, _PARAMS)) == encode(decode_body(body, _PARAMS))
    assert encode(shared) == encode(body)
    prefill = _instance("p", "prefill", engine="sglang", bootstrap_port=9000)
    both = bootstrap_body(body, prefill, 1 << 62)  # SGLang: both legs send this body
    assert encode(shared_prompt(both)) == encode(both)
    assert body == original


def test_sglang_bootstrap_fields() -> None:
    prefill = _instance("p", "prefill", engine="sglang", bootstrap_port=9000)
    body = bootstrap_body({"model": "m", "prompt": "x"}, prefill, 42)
    assert body == {"model": "m", "prompt": "x", "bootstrap_host": "10.0.0.1",
                    "bootstrap_port": 9000, "bootstrap_room": 42}
    rooms = {new_room() for _ in range(200)}
    assert all(0 <= r < 1 << ROOM_BITS for r in rooms) and len(rooms) == 200


def test_protocol_registry() -> None:
    assert protocol_for("vllm").kind == "vllm"
    assert protocol_for("sglang").kind == "sglang"
    assert protocol_for("fake").kind == "fake"
    for bad in ("tensorrt", "base", "../x"):
        with pytest.raises(NotFoundError):
            protocol_for(bad)


def test_pair_compatibility() -> None:
    p = _instance("p", "prefill", dtype="bfloat16", engine_version="0.32.0")
    assert pair_problem(p, _instance("d", "decode", dtype="bfloat16",
                                     engine_version="0.32.4")) is None
    assert "dtype" in str(pair_problem(p, _instance("d", "decode", dtype="float16")))
    assert "engine_version" in str(pair_problem(p, _instance("d", "decode",
                                                             engine_version="0.33.0")))
    assert "tp" not in str(pair_problem(p, _instance("d", "decode", tp_size=4)))
    far = _instance("p", "prefill", nixl_side_channel="localhost:5600")
    near = _instance("d", "decode", host="h1")
    assert "loopback" in str(pair_problem(far, near))
    sglang = _instance("s", "decode", engine="sglang")
    assert "engine kinds differ" in str(pair_problem(p, sglang))
    assert protocol_for("sglang").can_serve_alone(sglang) is False
    assert protocol_for("vllm").can_serve_alone(near) is True


def _decision(prefill: str, decode: str, d_cached: int, blocks: int) -> Decision:
    side = Side.model_construct
    transfer = Transfer.model_construct(block_hashes=tuple(range(blocks - d_cached)),
                                        blocks=blocks - d_cached, bytes=1, tier="same_rack",
                                        links=(), bottleneck_gb_per_s=None)
    return Decision.model_construct(
        request_id="r", policy="p", mode="disaggregated",
        prefill=side(worker=prefill, gpus=(), cached_blocks=0),
        decode=side(worker=decode, gpus=(), cached_blocks=d_cached), transfer=transfer,
        runners_up=(), score=0.0, considered=1, notes=(), decision_us=1.0)


@pytest.mark.parametrize(("d_cached", "threshold", "mode"), [
    (0, 256, "disaggregated"), (30, 256, "disaggregated"), (50, 256, "decode-only"),
    (50, 0, "disaggregated"), (10, 10_000, "decode-only")])
def test_conditional_disaggregation(d_cached: int, threshold: int, mode: str) -> None:
    named = {"p": _instance("p", "prefill"), "d": _instance("d", "decode")}
    route = PairChooser(threshold)._route(_decision("p", "d", d_cached, 64), named.get,
                                          64 * 16, 16)
    assert isinstance(route, Route) and route.mode == mode
    if mode == "decode-only":
        assert f"decode holds {d_cached * 16} of 1024" in route.reason


def test_gateway_body_errors_name_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_body(b'{"stream": "yes"}', "/v1/chat/completions")
    paths = {issue.path for issue in caught.value.issues}
    assert paths == {"body.model", "body.messages", "body.stream"}
    with pytest.raises(ValidationError):
        parse_body(b"[1, 2]", "/v1/completions")
    with pytest.raises(ValidationError):
        parse_body(b"{not json", "/v1/completions")
