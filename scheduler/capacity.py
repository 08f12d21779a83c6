"""What a prefill or decode instance can do, and how many of each a workload needs.

An *instance* is one serving engine on ``tp`` GPUs of one type (tensor parallel). Its
capability comes from ``config/capacity.yaml``: measured coefficients where the operator
profiled the (model, GPU, TP) triple, else coefficients derived from datasheet peaks and
stated efficiencies (the derivation is written out at the top of that file). The
document's models and loader live in :mod:`scheduler.capacity_config`.

* Prefill time for ``n`` uncached tokens after ``c`` cached ones:
  ``t = max(floor, a + b·n + c2·n² + 2·c2·n·c)`` — linear layers scale with ``n``,
  causal attention with ``n²/2 + n·c`` query-key pairs.
* Decode step time for ``batch`` sequences of mean context ``L``:
  ``t = base + per_seq·batch + per_token·batch·L`` — weights streamed once per step,
  the KV of every sequence read every step (memory-bound), plus the GEMM work.

Sizing (DistServe-style goodput: meet both SLOs, not only throughput):

* Prefill is an M/D/1 queue per instance: requests arrive at random, each is served in
  the deterministic time ``S`` of the mean prompt. The mean wait is
  ``W = ρ·S / (2·(1 − ρ))``; we require ``W + S_p90 ≤ TTFT SLO``, i.e.
  ``ρ ≤ 2·slack / (S + 2·slack)`` with ``slack = SLO − S_p90``, and never above the
  utilisation target. Instances = ⌈rate·S / ρ_max⌉.
* Decode uses Little's law: concurrency = rate × output tokens × TPOT. One instance can
  hold the largest batch whose step time meets the TPOT SLO and whose KV fits; it then
  produces batch / step tokens per second. Instances = ⌈rate·output / (that · target)⌉,
  and the operating batch solves ``B = (rate/N)·output·step(B)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from scheduler.capacity_config import (
    DOC_CONFIG,
    CapacityConfig,
    CapacityDefaults,
    DecodeCoefficients,
    GpuSpec,
    MeasuredProfile,
    PrefillCoefficients,
    load_capacity,
    parse_capacity,
)
from scheduler.kv import blocks_for, kv_bytes_per_token_per_gpu, resolve_dtype
from scheduler.models_config import ModelCatalog, ModelShape, load_models
from topology.documents import Name, PositiveFloat, ShareFraction, issues_from, read_document
from topology.errors import InputError, Issue, UnschedulableError, ValidationError

#: Includes the capacity document's names (defined in scheduler.capacity_config), which
#: callers keep importing from here.
__all__ = [
    "BatchLimit", "CapacityConfig", "CapacityDefaults", "DecodeCoefficients", "DecodeSizing",
    "GpuSpec", "InstanceProfile", "MeasuredProfile", "PrefillCoefficients", "PrefillSizing",
    "Sizing", "Workload", "attention_flops_per_pair", "build_profile", "instances_needed",
    "load_capacity", "load_workload", "parse_capacity",
]

_GIB = 1024**3

#: What caps a decode instance's batch: the TPOT SLO, KV memory or the engine's limit.
BatchLimit = Literal["tpot", "kv", "max_batch"]


# --- one instance --------------------------------------------------------------------


class InstanceProfile(BaseModel):
    """Prefill and decode capability of one model on one ``tp``-GPU instance."""

    model_config = ConfigDict(frozen=True)

    model: str
    gpu_type: str
    tp: int
    kv_dtype: str
    prefill: PrefillCoefficients
    decode: DecodeCoefficients
    prefill_source: str
    decode_source: str
    weights_gib_per_gpu: float
    kv_gib_per_gpu: float
    kv_bytes_per_token_per_gpu: int
    kv_capacity_tokens: int
    block_tokens: int
    max_batch: int

    @property
    def kv_capacity_blocks(self) -> int:
        """Whole KV blocks one instance holds (per GPU; every rank holds its shard)."""
        return self.kv_capacity_tokens // self.block_tokens

    def prefill_ms(self, tokens: float, context: float = 0.0) -> float:
        """Milliseconds to prefill ``tokens`` uncached tokens after ``context`` cached ones."""
        p = self.prefill
        work = (p.a_ms + p.b_ms_per_token * tokens + p.c_ms_per_token_sq * tokens * tokens
                + 2 * p.c_ms_per_token_sq * tokens * context)
        return max(p.floor_ms if p.floor_ms is not None else p.a_ms, work)

    def prefill_tokens_per_s(self, prompt_tokens: float, context: float = 0.0) -> float:
        """Prefill throughput when every batch is one prompt of ``prompt_tokens`` tokens."""
        return prompt_tokens / self.prefill_ms(prompt_tokens, context) * 1e3

    def decode_step_ms(self, batch: float, context: float) -> float:
        """Milliseconds of one decode step for ``batch`` sequences of mean ``context``."""
        d = self.decode
        return d.base_ms + d.per_seq_ms * batch + d.per_token_ms * batch * context

    def tpot_batch_limit(self, tpot_ms: float, context: float) -> int:
        """Largest batch whose step time meets ``tpot_ms`` (capped at ``max_batch``)."""
        slope = self.decode.per_seq_ms + self.decode.per_token_ms * context
        if tpot_ms < self.decode.base_ms:
            return 0
        if slope <= 0:
            return self.max_batch
        # The epsilon keeps an exact fit (step == TPOT) from flooring one below.
        return min(self.max_batch, math.floor((tpot_ms - self.decode.base_ms) / slope + 1e-9))

    def kv_batch_limit(self, context: float) -> int:
        """Sequences of ``context`` tokens whose KV blocks fit the instance at once."""
        per_sequence = blocks_for(max(1, math.ceil(context)), self.block_tokens)
        return self.kv_capacity_blocks // per_sequence

    def max_batch_for(self, tpot_ms: float, context: float) -> int:
        """Largest batch meeting the TPOT target whose KV fits."""
        return min(self.tpot_batch_limit(tpot_ms, context), self.kv_batch_limit(context))

    def decode_tokens_per_s(self, tpot_ms: float, context: float) -> float:
        """Output tokens per second at the largest batch that meets ``tpot_ms``."""
        batch = self.max_batch_for(tpot_ms, context)
        return batch / self.decode_step_ms(batch, context) * 1e3 if batch else 0.0


def attention_flops_per_pair(model: ModelShape) -> float:
    """FLOPs of one (query, key) pair over all layers and heads: QKᵀ plus the AV product."""
    if model.attention == "mla":
        qk = (model.qk_nope_head_dim or 0) + (model.qk_rope_head_dim or 0)
        value = model.v_head_dim or 0
    else:
        qk = value = model.head_dim or 0
    return 2.0 * model.num_layers * model.num_attention_heads * (qk + value)


def build_profile(model: ModelShape, gpu_type: str, tp: int,
                  capacity: CapacityConfig | None = None,
                  kv_dtype: str | None = None) -> InstanceProfile:
    """The capability of ``model`` on one ``tp``-GPU instance of ``gpu_type``.

    Raises :class:`UnschedulableError` when the model cannot run there at all (heads not
    divisible by ``tp``, weights larger than the usable memory).
    """
    capacity = capacity or load_capacity()
    gpu = capacity.gpu(gpu_type)
    _check_tp(model, gpu, tp)
    dtype = resolve_dtype(model, kv_dtype)
    weights_gib, kv_gib = _memory_split(model, gpu, tp, capacity.defaults)
    per_gpu = kv_bytes_per_token_per_gpu(model, tp, dtype)
    block = capacity.defaults.block_tokens
    measured = capacity.profile_for(model.name, gpu.name, tp)
    derived = f"derived from {gpu.name} datasheet peaks and config efficiencies"
    return InstanceProfile(
        model=model.name, gpu_type=gpu.name, tp=tp, kv_dtype=dtype,
        prefill=(measured.prefill if measured and measured.prefill
                 else _derived_prefill(model, gpu, tp, capacity.defaults)),
        decode=(measured.decode if measured and measured.decode
                else _derived_decode(model, gpu, tp, capacity.defaults, per_gpu)),
        prefill_source=measured.source if measured and measured.prefill else derived,
        decode_source=measured.source if measured and measured.decode else derived,
        weights_gib_per_gpu=weights_gib, kv_gib_per_gpu=kv_gib,
        kv_bytes_per_token_per_gpu=per_gpu,
        kv_capacity_tokens=int(kv_gib * _GIB // per_gpu) // block * block,
        block_tokens=block, max_batch=capacity.defaults.max_decode_batch,
    )


def _check_tp(model: ModelShape, gpu: GpuSpec, tp: int) -> None:
    if tp not in gpu.tp_efficiency:
        raise InputError(f"TP {tp} is not modelled for {gpu.name}; modelled sizes: "
                         f"{', '.join(str(size) for size in sorted(gpu.tp_efficiency))}")
    if model.num_attention_heads % tp:
        raise UnschedulableError([f"{model.name} has {model.num_attention_heads} attention "
                                  f"heads, which tensor parallelism of {tp} does not divide"])


def _memory_split(model: ModelShape, gpu: GpuSpec, tp: int,
                  defaults: CapacityDefaults) -> tuple[float, float]:
    """(weights, free for KV) in GiB per GPU; unschedulable when the weights do not fit."""
    memory = gpu.memory_mib / 1024
    usable = memory * defaults.memory_utilisation - defaults.activation_reserve_gib
    weights = model.weight_bytes / tp / _GIB
    if weights >= usable:
        larger = "a larger TP size, " if tp < max(gpu.tp_efficiency) else ""
        raise UnschedulableError([
            f"{model.name} does not fit one {gpu.name} TP-{tp} instance: its "
            f"{model.weight_dtype} weights need {weights:.1f} GiB per GPU "
            f"({weights * tp:.0f} GiB over {tp}), but each GPU has {usable:.1f} GiB usable "
            f"({memory:.1f} GiB × {defaults.memory_utilisation:.2f} − "
            f"{defaults.activation_reserve_gib:g} GiB reserve); use {larger}a GPU with more "
            "memory or lower-precision weights"])
    return weights, usable - weights


def _derived_prefill(model: ModelShape, gpu: GpuSpec, tp: int,
                     defaults: CapacityDefaults) -> PrefillCoefficients:
    flops = gpu.peak_flops(model.weight_dtype) * defaults.prefill_mfu * tp * gpu.tp_efficiency[tp]
    bandwidth = gpu.hbm_gb_per_s * 1e9 * defaults.hbm_efficiency
    return PrefillCoefficients(
        a_ms=defaults.prefill_overhead_ms,
        b_ms_per_token=2 * model.active_params / flops * 1e3,
        c_ms_per_token_sq=attention_flops_per_pair(model) / 2 / flops * 1e3,
        floor_ms=defaults.prefill_overhead_ms + model.weight_bytes / tp / bandwidth * 1e3,
    )


def _derived_decode(model: ModelShape, gpu: GpuSpec, tp: int, defaults: CapacityDefaults,
                    kv_per_gpu: int) -> DecodeCoefficients:
    flops = (gpu.peak_flops(model.weight_dtype) * defaults.decode_compute_efficiency * tp
             * gpu.tp_efficiency[tp])
    bandwidth = gpu.hbm_gb_per_s * 1e9 * defaults.hbm_efficiency
    # Two all-reduces per layer (after attention and after the MLP) on every step.
    allreduce_ms = 2 * model.num_layers * gpu.allreduce_latency_us / 1e3 if tp > 1 else 0.0
    return DecodeCoefficients(
        base_ms=defaults.decode_overhead_ms + allreduce_ms
        + model.weight_bytes / tp / bandwidth * 1e3,
        per_seq_ms=2 * model.active_params / flops * 1e3,
        per_token_ms=(kv_per_gpu / bandwidth + attention_flops_per_pair(model) / flops) * 1e3,
    )


# --- workloads and sizing ------------------------------------------------------------


class Workload(BaseModel):
    """Traffic to serve and its latency objectives (TTFT read as a p90 target)."""

    model_config = DOC_CONFIG

    model: Name
    rate_rps: PositiveFloat
    input_tokens_mean: PositiveFloat
    input_tokens_p90: PositiveFloat | None = None
    output_tokens_mean: PositiveFloat
    cached_fraction: ShareFraction = 0.0
    ttft_slo_ms: PositiveFloat
    tpot_slo_ms: PositiveFloat

    @field_validator("input_tokens_p90")
    @classmethod
    def _p90_above_mean(cls, value: float | None, info: ValidationInfo) -> float | None:
        mean = info.data.get("input_tokens_mean")
        if value is not None and mean is not None and value < mean:
            raise PydanticCustomError("p90", "must be at least input_tokens_mean ({mean})",
                                      {"mean": mean})
        return value


def load_workload(path: str | Path) -> Workload:
    """Load a workload from YAML or JSON (``.json``); all problems reported with paths."""
    data = read_document(path, "a workload document (rate_rps, input_tokens_mean, ...)")
    issues = []
    if isinstance(data, dict) and "version" in data:
        data = dict(data)
        if data.pop("version") != 1:
            issues.append(Issue("version", "must be 1"))
    try:
        workload = Workload.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(str(path), issues + issues_from(exc)) from exc
    if issues:
        raise ValidationError(str(path), issues)
    return workload


class PrefillSizing(BaseModel):
    """How the prefill pool was sized (times in ms, rates in requests/s)."""

    model_config = ConfigDict(frozen=True)

    service_ms: float
    p90_service_ms: float
    rps_per_instance: float
    utilisation: float
    utilisation_cap: float
    utilisation_target: float
    ttft_estimate_ms: float
    profile: InstanceProfile


class DecodeSizing(BaseModel):
    """How the decode pool was sized (times in ms, tokens/s of output)."""

    model_config = ConfigDict(frozen=True)

    mean_context_tokens: float
    max_batch: int
    batch_limit: BatchLimit
    step_ms_at_max_batch: float
    tokens_per_s_per_instance: float
    operating_batch: float
    tpot_estimate_ms: float
    concurrency_needed: float
    utilisation: float
    utilisation_target: float
    kv_capacity_tokens: int
    kv_capacity_blocks: int
    profile: InstanceProfile


class Sizing(BaseModel):
    """Instance counts for a workload, with the numbers and reasoning behind them."""

    model_config = ConfigDict(frozen=True)

    model: str
    gpu_type: str
    tp_prefill: int
    tp_decode: int
    prefill_instances: int
    decode_instances: int
    total_gpus: int
    prefill: PrefillSizing
    decode: DecodeSizing
    explanation: tuple[str, ...]


@dataclass
class _Plan:
    instances: int = 0
    notes: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    prefill: PrefillSizing | None = None
    decode: DecodeSizing | None = None


def instances_needed(workload: Workload, model: ModelShape | None, gpu_type: str,
                     tp_prefill: int, tp_decode: int, *,
                     capacity: CapacityConfig | None = None,
                     catalog: ModelCatalog | None = None,
                     kv_dtype: str | None = None) -> Sizing:
    """Prefill and decode instances of ``gpu_type`` that serve ``workload`` within its SLOs.

    ``model`` None looks ``workload.model`` up in ``catalog`` (default: the packaged
    one). Raises :class:`UnschedulableError` with every reason when no count can work.
    """
    capacity = capacity or load_capacity()
    shape = model if model is not None else (catalog or load_models()).get(workload.model)
    profiles: dict[int, InstanceProfile] = {}
    reasons: list[str] = []
    for tp in dict.fromkeys((tp_prefill, tp_decode)):
        try:
            profiles[tp] = build_profile(shape, gpu_type, tp, capacity, kv_dtype)
        except UnschedulableError as exc:
            reasons += exc.reasons
    if reasons:
        raise UnschedulableError(reasons)
    prefill = _size_prefill(workload, profiles[tp_prefill], capacity.defaults)
    decode = _size_decode(workload, profiles[tp_decode], capacity.defaults)
    if prefill.prefill is None or decode.decode is None:
        raise UnschedulableError(prefill.reasons + decode.reasons)
    return Sizing(
        model=shape.name, gpu_type=profiles[tp_prefill].gpu_type, tp_prefill=tp_prefill,
        tp_decode=tp_decode, prefill_instances=prefill.instances,
        decode_instances=decode.instances,
        total_gpus=prefill.instances * tp_prefill + decode.instances * tp_decode,
        prefill=prefill.prefill, decode=decode.decode,
        explanation=tuple(prefill.notes + decode.notes),
    )


def _uncached(tokens: float, cached_fraction: float) -> tuple[float, float]:
    """(tokens to compute, tokens already cached); at least one token is always computed."""
    return max(1.0, tokens * (1 - cached_fraction)), tokens * cached_fraction


def _size_prefill(work: Workload, profile: InstanceProfile, defaults: CapacityDefaults) -> _Plan:
    where = f"one {profile.gpu_type} TP-{profile.tp} prefill instance"
    p90 = work.input_tokens_p90 or work.input_tokens_mean
    service = profile.prefill_ms(*_uncached(work.input_tokens_mean, work.cached_fraction))
    p90_tokens = _uncached(p90, work.cached_fraction)
    p90_service = profile.prefill_ms(*p90_tokens)
    plan = _Plan()
    if p90_service >= work.ttft_slo_ms:
        plan.reasons.append(
            f"TTFT SLO {work.ttft_slo_ms:g} ms cannot be met: a {p90:,.0f}-token prompt "
            f"({p90_tokens[0]:,.0f} uncached) alone takes {p90_service:,.1f} ms to prefill on "
            f"{where}; use a larger prefill TP size, a faster GPU, more prefix caching or a "
            "looser TTFT SLO")
    if p90 > profile.kv_capacity_tokens:
        plan.reasons.append(f"a {p90:,.0f}-token prompt does not fit the KV memory of {where} "
                            f"({profile.kv_capacity_tokens:,} tokens)")
    if plan.reasons:
        return plan
    slack = work.ttft_slo_ms - p90_service
    cap = min(defaults.prefill_utilisation_target, 2 * slack / (service + 2 * slack))
    busy = work.rate_rps * service / 1e3
    plan.instances = max(1, math.ceil(busy / cap - 1e-9))
    rho = busy / plan.instances
    ttft = rho * service / (2 * (1 - rho)) + p90_service
    plan.prefill = PrefillSizing(
        service_ms=service, p90_service_ms=p90_service, rps_per_instance=cap * 1e3 / service,
        utilisation=rho, utilisation_cap=cap,
        utilisation_target=defaults.prefill_utilisation_target, ttft_estimate_ms=ttft,
        profile=profile)
    plan.notes += [
        f"prefill: the mean prompt ({work.input_tokens_mean:,.0f} tokens, "
        f"{work.cached_fraction:.0%} cached) takes {service:,.1f} ms on {where}, the p90 "
        f"prompt ({p90:,.0f}) {p90_service:,.1f} ms ({profile.prefill_source})",
        f"prefill: M/D/1 wait W = ρ·S/(2(1−ρ)); W + {p90_service:,.1f} ms ≤ TTFT SLO "
        f"{work.ttft_slo_ms:g} ms allows ρ ≤ {2 * slack / (service + 2 * slack):.2f}; with the "
        f"utilisation target {defaults.prefill_utilisation_target:.2f} the cap is {cap:.2f} "
        f"({cap * 1e3 / service:,.2f} rps per instance)",
        f"prefill: {work.rate_rps:g} rps × {service:,.1f} ms = {busy:,.2f} busy instances ÷ "
        f"{cap:.2f} → {plan.instances} instance(s) at ρ = {rho:.2f}, p90 TTFT ≈ {ttft:,.0f} ms",
    ]
    return plan


def _size_decode(work: Workload, profile: InstanceProfile, defaults: CapacityDefaults) -> _Plan:
    where = f"one {profile.gpu_type} TP-{profile.tp} decode instance"
    context = work.input_tokens_mean + work.output_tokens_mean / 2
    peak = math.ceil((work.input_tokens_p90 or work.input_tokens_mean) + work.output_tokens_mean)
    plan = _Plan()
    if blocks_for(peak, profile.block_tokens) > profile.kv_capacity_blocks:
        plan.reasons.append(
            f"one {peak:,}-token sequence (p90 prompt + mean output) does not fit the KV memory "
            f"of {where} ({profile.kv_capacity_tokens:,} tokens, {profile.kv_gib_per_gpu:.1f} "
            "GiB per GPU)")
    minimum = profile.decode_step_ms(1, context)
    if minimum > work.tpot_slo_ms:
        plan.reasons.append(
            f"TPOT SLO {work.tpot_slo_ms:g} ms is below the {minimum:.1f} ms step time of {where} "
            f"even at batch 1 (mean context {context:,.0f} tokens); use a larger decode TP size, "
            "a faster GPU or a looser TPOT SLO")
    if plan.reasons:
        return plan
    limits: dict[BatchLimit, int] = {
        "tpot": profile.tpot_batch_limit(work.tpot_slo_ms, context),
        "kv": profile.kv_batch_limit(context), "max_batch": profile.max_batch}
    binding, batch = min(limits.items(), key=lambda item: item[1])  # ties: first listed
    step = profile.decode_step_ms(batch, context)
    per_instance = batch / step * 1e3
    demand = work.rate_rps * work.output_tokens_mean
    target = defaults.decode_utilisation_target
    plan.instances = max(1, math.ceil(demand / (per_instance * target) - 1e-9))
    # Little's law per instance, B = λ·out·step(B), solved for B (step is linear in B).
    arrivals = work.rate_rps / plan.instances * work.output_tokens_mean / 1e3
    slope = profile.decode.per_seq_ms + profile.decode.per_token_ms * context
    operating = arrivals * profile.decode.base_ms / (1 - arrivals * slope)
    tpot = profile.decode_step_ms(operating, context)
    plan.decode = DecodeSizing(
        mean_context_tokens=context, max_batch=batch, batch_limit=binding,
        step_ms_at_max_batch=step, tokens_per_s_per_instance=per_instance,
        operating_batch=operating, tpot_estimate_ms=tpot,
        concurrency_needed=work.rate_rps * work.output_tokens_mean * tpot / 1e3,
        utilisation=demand / (per_instance * plan.instances), utilisation_target=target,
        kv_capacity_tokens=profile.kv_capacity_tokens,
        kv_capacity_blocks=profile.kv_capacity_blocks, profile=profile)
    plan.notes += [
        f"decode: step = {profile.decode.base_ms:.2f} ms + {profile.decode.per_seq_ms:.4f} ms × "
        f"batch + {profile.decode.per_token_ms * 1e3:.4f} µs × batch × context on {where} "
        f"({profile.decode_source}); mean context {context:,.0f} tokens",
        f"decode: batch limits — TPOT {limits['tpot']:,}, KV {limits['kv']:,} "
        f"({profile.kv_capacity_tokens:,} tokens), engine {limits['max_batch']:,}; "
        f"{binding} binds at {batch:,} ({step:.1f} ms/step, {per_instance:,.0f} tokens/s)",
        f"decode: {work.rate_rps:g} rps × {work.output_tokens_mean:,.0f} tokens = {demand:,.0f} "
        f"tokens/s ÷ ({per_instance:,.0f} × {target:.2f}) → {plan.instances} instance(s); "
        f"Little's law gives {operating:,.1f} sequences each at TPOT ≈ {tpot:.1f} ms",
    ]
    return plan
