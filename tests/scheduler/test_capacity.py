"""The per-GPU capacity model, its document, workloads and instance sizing."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.capacity import (
    CapacityConfig,
    InstanceProfile,
    Workload,
    attention_flops_per_pair,
    build_profile,
    instances_needed,
    load_capacity,
    load_workload,
    parse_capacity,
)
from scheduler.models_config import load_models, packaged_text
from topology.errors import InputError, Issue, NotFoundError, ParseError, UnschedulableError
from topology.errors import ValidationError as DocumentError

CATALOG = load_models()
CAPACITY = load_capacity()
GPU_TYPES = ("H100", "H200", "A100", "B200", "L40S")


def workload(**overrides: Any) -> Workload:
    """A chat-like workload on Llama-3-70B: 2K prompts, 256-token answers."""
    fields: dict[str, Any] = {"model": "llama-3-70b", "rate_rps": 10.0,
                              "input_tokens_mean": 2048.0, "input_tokens_p90": 4096.0,
                              "output_tokens_mean": 256.0, "ttft_slo_ms": 1000.0,
                              "tpot_slo_ms": 50.0}
    fields.update(overrides)
    return Workload(**fields)


def capacity_data(**profiles: Any) -> dict[str, Any]:
    """The packaged capacity document as data, with ``profiles`` replaced if given."""
    data: dict[str, Any] = yaml.safe_load(packaged_text("capacity.yaml"))
    if profiles:
        data["profiles"] = profiles["profiles"]
    return data


def capacity_with(profile: dict[str, Any]) -> CapacityConfig:
    return parse_capacity(yaml.safe_dump(capacity_data(profiles=[profile])), "cap.yaml")


def round_profile(**overrides: Any) -> dict[str, Any]:
    """Measured coefficients with round numbers, for hand-computed sizing."""
    entry: dict[str, Any] = {
        "model": "llama-3-8b", "gpu": "H100", "tp": 1, "source": "hand-made test numbers",
        "prefill": {"a_ms": 10.0, "b_ms_per_token": 0.1, "c_ms_per_token_sq": 0.0,
                    "floor_ms": 0.0},
        "decode": {"base_ms": 20.0, "per_seq_ms": 0.1, "per_token_ms": 0.0},
    }
    entry.update(overrides)
    return entry


def profile(model: str = "llama-3-8b", gpu: str = "H100", tp: int = 1) -> InstanceProfile:
    return build_profile(CATALOG.get(model), gpu, tp, CAPACITY)


# --- the shipped document ------------------------------------------------------------------


def test_shipped_gpus_cover_tp_1_to_8() -> None:
    assert sorted(CAPACITY.gpus) == sorted(GPU_TYPES)
    for spec in CAPACITY.gpus.values():
        assert sorted(spec.tp_efficiency) == [1, 2, 4, 8]
        assert "bf16" in spec.dense_tflops


def test_gpu_lookup_by_alias_any_case() -> None:
    assert CAPACITY.gpu("h100-sxm").name == "H100"
    assert CAPACITY.gpu("NVIDIA H200").name == "H200"
    with pytest.raises(NotFoundError, match=r"unknown GPU type 'V100'.*known: A100"):
        CAPACITY.gpu("V100")


def test_every_shipped_model_fits_some_shipped_instance() -> None:
    for name in CATALOG.names():
        fits = []
        for gpu in GPU_TYPES:
            for tp in (1, 2, 4, 8):
                try:
                    fits.append(build_profile(CATALOG.get(name), gpu, tp, CAPACITY))
                except UnschedulableError:
                    continue
        assert fits, name


def test_capacity_loader_reports_every_problem_at_once() -> None:
    data = capacity_data(profiles=[
        round_profile(gpu="V100"),
        round_profile(tp=3),
        round_profile(),
        round_profile(source=""),
    ])
    data["version"] = 3
    data["defaults"]["prefill_utilisation_target"] = 1.0
    data["defaults"].pop("hbm_efficiency")
    data["gpus"]["H100"]["memory_mib"] = -80
    data["gpus"]["A100"]["dense_tflops"] = {"fp8": 100}
    data["gpus"]["L40S"]["tp_efficiency"] = {1: 1.0, 2: 0.4}
    with pytest.raises(DocumentError) as raised:
        parse_capacity(yaml.safe_dump(data), "cap.yaml")
    issues = set(raised.value.issues)
    assert {
        Issue("version", "must be 1"),
        Issue("defaults.prefill_utilisation_target", "must be a number in (0, 1)"),
        Issue("defaults.hbm_efficiency", "is required"),
        Issue("gpus.H100.memory_mib", "must be a positive integer"),
        Issue("gpus.A100.dense_tflops", "must list bf16 (the fallback compute dtype)"),
        Issue("gpus.L40S.tp_efficiency",
              "must include TP 1, and tp × efficiency must not fall as tp grows"),
        Issue("profiles[0].gpu", "unknown GPU type 'V100'"),
        Issue("profiles[1].tp", "H100 models TP sizes [1, 2, 4, 8]"),
        Issue("profiles[3]", "repeats an earlier (model, gpu, tp) entry"),
        Issue("profiles[3].source", "must be a non-empty string"),
    } <= issues


def test_a_user_capacity_file(tmp_path: Path) -> None:
    path = tmp_path / "capacity.yaml"
    path.write_text(yaml.safe_dump(capacity_data(profiles=[round_profile()])), encoding="utf-8")
    config = load_capacity(path)
    measured = build_profile(CATALOG.get("llama-3-8b"), "h100", 1, config)
    assert measured.prefill_source == "hand-made test numbers"
    assert measured.prefill_ms(1000) == pytest.approx(110.0)
    # Other triples keep the derived numbers.
    assert build_profile(CATALOG.get("llama-3-8b"), "H100", 2, config).prefill_source.startswith(
        "derived")


def test_missing_capacity_file_is_a_parse_error(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="cannot read file"):
        load_capacity(tmp_path / "absent.yaml")


# --- one instance ----------------------------------------------------------------------------


def test_derived_prefill_coefficients_by_hand() -> None:
    h100 = profile("llama-3-8b", "H100", 1)
    flops = 989e12 * 0.45 * 1 * 1.0
    assert h100.prefill.b_ms_per_token == pytest.approx(2 * 8.03e9 / flops * 1e3)
    # Per (query, key) pair: 2 FLOPs × 32 layers × 32 heads × (128 for QK + 128 for AV).
    assert attention_flops_per_pair(CATALOG.get("llama-3-8b")) == 2 * 32 * 32 * 256
    assert h100.prefill.c_ms_per_token_sq == pytest.approx(2 * 32 * 32 * 256 / 2 / flops * 1e3)
    weights_read_ms = 8.03e9 * 2 / (3350e9 * 0.75) * 1e3
    assert h100.prefill.floor_ms == pytest.approx(5.0 + weights_read_ms)


def test_mla_attention_flops_use_decompressed_head_sizes() -> None:
    # 61 layers × 128 heads × ((128 + 64) for QK + 128 for AV) × 2 FLOPs.
    assert attention_flops_per_pair(CATALOG.get("deepseek-v3")) == 2 * 61 * 128 * 320


def test_prefill_time_is_quadratic_in_new_tokens_and_linear_in_cached_context() -> None:
    measured = build_profile(CATALOG.get("llama-3-8b"), "H100", 1, capacity_with(round_profile(
        prefill={"a_ms": 5.0, "b_ms_per_token": 0.05, "c_ms_per_token_sq": 1e-5})))
    assert measured.prefill_ms(1000) == pytest.approx(5 + 50 + 10)
    assert measured.prefill_ms(1000, context=3000) == pytest.approx(5 + 50 + 10 + 60)
    assert measured.prefill_ms(0) == pytest.approx(5.0)  # no floor given: a_ms
    # The quadratic term makes long prompts slower per token.
    assert measured.prefill_tokens_per_s(32_000) < measured.prefill_tokens_per_s(2_000)


def test_kv_capacity_by_hand() -> None:
    tp4 = profile("llama-3-70b", "H100", 4)
    usable = 81559 / 1024 * 0.90 - 2.0
    weights = 70.6e9 * 2 / 4 / 1024**3
    assert tp4.weights_gib_per_gpu == pytest.approx(weights)
    assert tp4.kv_bytes_per_token_per_gpu == 320 * 1024 // 4
    tokens = math.floor((usable - weights) * 1024**3 / (80 * 1024)) // 16 * 16
    assert tp4.kv_capacity_tokens == tokens
    assert tp4.kv_capacity_blocks == tokens // 16


def test_decode_step_is_weights_plus_kv_reads() -> None:
    tp4 = profile("llama-3-70b", "H100", 4)
    bandwidth = 3350e9 * 0.75
    base = 2.0 + 2 * 80 * 8 / 1e3 + 70.6e9 * 2 / 4 / bandwidth * 1e3
    assert tp4.decode.base_ms == pytest.approx(base)
    assert tp4.decode_step_ms(1, 0) == pytest.approx(base + tp4.decode.per_seq_ms)
    kv_read_ms = 64 * 4096 * (80 * 1024) / bandwidth * 1e3
    assert tp4.decode_step_ms(64, 4096) - tp4.decode_step_ms(64, 0) >= kv_read_ms


def test_a_model_that_does_not_fit_is_unschedulable() -> None:
    with pytest.raises(UnschedulableError) as raised:
        profile("llama-3-70b", "H100", 1)
    (reason,) = raised.value.reasons
    assert reason.startswith("llama-3-70b does not fit one H100 TP-1 instance: its bf16 weights "
                             "need 131.5 GiB per GPU")
    assert "use a larger TP size" in reason
    with pytest.raises(UnschedulableError, match="does not fit one H100 TP-8") as v3:
        profile("deepseek-v3", "H100", 8)
    assert "larger TP size" not in str(v3.value)  # TP 8 is already the largest modelled
    assert profile("deepseek-v3", "H200", 8).kv_capacity_tokens > 100_000


def test_heads_must_divide_by_tp_and_tp_must_be_modelled() -> None:
    with pytest.raises(UnschedulableError, match="28 attention heads, which tensor "
                                                  "parallelism of 8 does not divide"):
        profile("qwen2.5-7b", "H100", 8)
    with pytest.raises(InputError, match="TP 3 is not modelled for H100; modelled sizes: "
                                         "1, 2, 4, 8"):
        profile("llama-3-8b", "H100", 3)


@settings(max_examples=40, deadline=None)
@given(gpu=st.sampled_from(GPU_TYPES), prompt=st.integers(min_value=1, max_value=65_536),
       model=st.sampled_from(["llama-3-8b", "mixtral-8x7b"]))
def test_more_tp_gives_more_prefill_throughput_per_instance(gpu: str, prompt: int,
                                                            model: str) -> None:
    rates = []
    for tp in (1, 2, 4, 8):
        try:
            rates.append(profile(model, gpu, tp).prefill_tokens_per_s(prompt))
        except UnschedulableError:
            continue  # does not fit at this TP (Mixtral on one L40S)
    assert len(rates) >= 2
    assert all(later > earlier for earlier, later in itertools.pairwise(rates))


@settings(max_examples=40, deadline=None)
@given(tight=st.floats(min_value=5, max_value=200), extra=st.floats(min_value=0, max_value=200),
       context=st.integers(min_value=1, max_value=32_000))
def test_tighter_tpot_gives_a_smaller_batch(tight: float, extra: float, context: int) -> None:
    tp4 = profile("llama-3-70b", "H200", 4)
    assert tp4.max_batch_for(tight, context) <= tp4.max_batch_for(tight + extra, context)
    batch = tp4.max_batch_for(tight, context)
    if batch:
        assert tp4.decode_step_ms(batch, context) <= tight + 1e-9
        assert tp4.decode_tokens_per_s(tight, context) > 0


# --- workloads -----------------------------------------------------------------------------


def test_load_workload_yaml_and_json(tmp_path: Path) -> None:
    fields = {"model": "llama-3-8b", "rate_rps": 4, "input_tokens_mean": 1500,
              "output_tokens_mean": 300, "cached_fraction": 0.25, "ttft_slo_ms": 800,
              "tpot_slo_ms": 40}
    as_yaml = tmp_path / "chat.yaml"
    as_yaml.write_text("version: 1\n" + yaml.safe_dump(fields), encoding="utf-8")
    as_json = tmp_path / "chat.json"
    as_json.write_text(json.dumps(fields), encoding="utf-8")
    assert load_workload(as_yaml) == load_workload(as_json) == Workload(**fields)


def test_workload_errors_are_all_reported_with_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "version": 2, "model": "", "rate_rps": -3, "input_tokens_mean": 2000,
        "input_tokens_p90": 1000, "output_tokens_mean": "many", "cached_fraction": 1.0,
        "ttft_slo_ms": 0, "burst": True}), encoding="utf-8")
    with pytest.raises(DocumentError) as raised:
        load_workload(path)
    assert set(raised.value.issues) == {
        Issue("version", "must be 1"),
        Issue("model", "must be a non-empty string"),
        Issue("rate_rps", "must be a positive number"),
        Issue("input_tokens_p90", "must be at least input_tokens_mean (2000.0)"),
        Issue("output_tokens_mean", "must be a positive number"),
        Issue("cached_fraction", "must be a number in [0, 1)"),
        Issue("ttft_slo_ms", "must be a positive number"),
        Issue("tpot_slo_ms", "is required"),
        Issue("burst", "is not a known field"),
    }
    assert raised.value.source == str(path)


def test_workload_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "rate_rps": 3,\n  "model": }\n', encoding="utf-8")
    with pytest.raises(ParseError) as raised:
        load_workload(path)
    assert raised.value.location.line == 3


# --- sizing -----------------------------------------------------------------------------------


def test_sizing_by_hand() -> None:
    """Round measured numbers, so every figure can be checked on paper."""
    config = capacity_with(round_profile())
    sizing = instances_needed(
        workload(model="llama-3-8b", input_tokens_mean=1000.0, input_tokens_p90=None,
                 output_tokens_mean=100.0, ttft_slo_ms=500.0, tpot_slo_ms=40.0),
        None, "H100", 1, 1, capacity=config)
    prefill, decode = sizing.prefill, sizing.decode
    # Prefill: S = 10 + 0.1 × 1000 = 110 ms; slack 390 ms allows ρ ≤ 780/890 = 0.876, so
    # the 0.7 target binds; 10 rps × 0.11 s = 1.1 busy instances / 0.7 → 2, ρ = 0.55.
    assert prefill.service_ms == pytest.approx(110.0)
    assert prefill.utilisation_cap == pytest.approx(0.7)
    assert prefill.rps_per_instance == pytest.approx(0.7 / 0.110)
    assert sizing.prefill_instances == 2
    assert prefill.utilisation == pytest.approx(0.55)
    assert prefill.ttft_estimate_ms == pytest.approx(0.55 * 110 / (2 * 0.45) + 110)
    # Decode: step = 20 + 0.1·B ≤ 40 ms → B = 200 (under KV and the engine's 256);
    # 200 / 40 ms = 5,000 tokens/s; demand 1,000 tokens/s / (5,000 × 0.9) → 1 instance.
    assert (decode.max_batch, decode.batch_limit) == (200, "tpot")
    assert decode.tokens_per_s_per_instance == pytest.approx(5000.0)
    assert sizing.decode_instances == 1
    # Little's law: B = 10 × 100 × (20 + 0.1·B) / 1000 → B = 20 / 0.9.
    assert decode.operating_batch == pytest.approx(20 / 0.9)
    assert decode.tpot_estimate_ms == pytest.approx(20 + 0.1 * 20 / 0.9)
    assert decode.concurrency_needed == pytest.approx(10 * 100 * decode.tpot_estimate_ms / 1e3)
    assert decode.mean_context_tokens == pytest.approx(1050.0)
    assert sizing.total_gpus == 3
    assert any("M/D/1" in line for line in sizing.explanation)
    assert any("Little's law" in line for line in sizing.explanation)


def test_cached_prefix_shortens_prefill() -> None:
    config = capacity_with(round_profile())
    base = {"model": "llama-3-8b", "input_tokens_mean": 1000.0, "input_tokens_p90": None,
            "output_tokens_mean": 100.0, "ttft_slo_ms": 500.0, "tpot_slo_ms": 40.0}
    cold = instances_needed(workload(**base), None, "H100", 1, 1, capacity=config)
    warm = instances_needed(workload(**base, cached_fraction=0.5), None, "H100", 1, 1,
                            capacity=config)
    assert warm.prefill.service_ms == pytest.approx(10 + 0.1 * 500)
    assert warm.prefill.service_ms < cold.prefill.service_ms


def test_derived_sizing_for_a_chat_workload() -> None:
    sizing = instances_needed(workload(), CATALOG.get("llama-3-70b"), "H100", 4, 4,
                              capacity=CAPACITY)
    assert sizing.prefill_instances >= 1 and sizing.decode_instances >= 1
    assert sizing.prefill.ttft_estimate_ms <= 1000.0
    assert sizing.decode.tpot_estimate_ms <= 50.0
    assert sizing.prefill.utilisation <= sizing.prefill.utilisation_cap + 1e-9
    assert sizing.total_gpus == 4 * (sizing.prefill_instances + sizing.decode_instances)
    assert json.loads(sizing.model_dump_json())["decode"]["batch_limit"] in {
        "tpot", "kv", "max_batch"}


@settings(max_examples=30, deadline=None)
@given(low=st.floats(min_value=0.1, max_value=200), factor=st.floats(min_value=1, max_value=10))
def test_higher_rate_needs_no_fewer_instances(low: float, factor: float) -> None:
    slow = instances_needed(workload(rate_rps=low), None, "H200", 4, 2, capacity=CAPACITY,
                            catalog=CATALOG)
    fast = instances_needed(workload(rate_rps=low * factor), None, "H200", 4, 2,
                            capacity=CAPACITY, catalog=CATALOG)
    assert fast.prefill_instances >= slow.prefill_instances
    assert fast.decode_instances >= slow.decode_instances


def test_ten_times_the_rate_needs_more_instances() -> None:
    slow = instances_needed(workload(rate_rps=5), None, "H100", 4, 4, capacity=CAPACITY)
    fast = instances_needed(workload(rate_rps=50), None, "H100", 4, 4, capacity=CAPACITY)
    assert fast.prefill_instances > slow.prefill_instances
    assert fast.decode_instances > slow.decode_instances


def test_infeasible_slos_are_explained_all_at_once() -> None:
    with pytest.raises(UnschedulableError) as raised:
        instances_needed(workload(input_tokens_mean=16_000, input_tokens_p90=32_000,
                                  ttft_slo_ms=300, tpot_slo_ms=5),
                         None, "H100", 4, 4, capacity=CAPACITY)
    ttft, tpot = raised.value.reasons
    assert ttft.startswith("TTFT SLO 300 ms cannot be met: a 32,000-token prompt "
                           "(32,000 uncached) alone takes")
    assert "on one H100 TP-4 prefill instance" in ttft
    assert tpot.startswith("TPOT SLO 5 ms is below the ")
    assert "step time of one H100 TP-4 decode instance even at batch 1" in tpot


def test_a_sequence_too_long_for_kv_memory_is_unschedulable() -> None:
    with pytest.raises(UnschedulableError, match="does not fit the KV memory"):
        instances_needed(workload(model="llama-3.1-405b-fp8", input_tokens_mean=400_000,
                                  input_tokens_p90=None, ttft_slo_ms=1e9, tpot_slo_ms=1e6),
                         None, "H100", 8, 8, capacity=CAPACITY)


def test_weights_that_do_not_fit_are_reported_once_for_both_roles() -> None:
    with pytest.raises(UnschedulableError) as raised:
        instances_needed(workload(), None, "A100", 1, 1, capacity=CAPACITY)
    assert len(raised.value.reasons) == 1
    assert "llama-3-70b does not fit one A100 TP-1 instance" in raised.value.reasons[0]
