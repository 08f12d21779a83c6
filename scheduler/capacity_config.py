"""The capacity document ``config/capacity.yaml``: its models and how it is loaded.

The document holds the efficiencies and sizing targets (``defaults``), the datasheet
figures of each GPU type (``gpus``) and the coefficients the operator measured for
(model, GPU, TP) triples (``profiles``). Every problem in it is reported at once with
its path. :mod:`scheduler.capacity` turns it into instance capability and sizing.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from scheduler.models_config import DtypeName
from topology.documents import (
    Name,
    NameList,
    NonNegativeFloat,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    UnitFraction,
    issues_from,
    packaged_text,
    parse_document,
    read_text,
)
from topology.errors import Issue, NotFoundError, ValidationError

#: Versioned documents are frozen, refuse unknown fields and do not coerce types.
DOC_CONFIG = ConfigDict(frozen=True, extra="forbid", strict=True)


class CapacityDefaults(BaseModel):
    """Efficiencies and sizing targets (see ``config/capacity.yaml`` for each source)."""

    model_config = DOC_CONFIG

    prefill_mfu: UnitFraction
    decode_compute_efficiency: UnitFraction
    hbm_efficiency: UnitFraction
    prefill_overhead_ms: NonNegativeFloat
    decode_overhead_ms: NonNegativeFloat
    memory_utilisation: UnitFraction
    activation_reserve_gib: NonNegativeFloat
    prefill_utilisation_target: OpenFraction
    decode_utilisation_target: UnitFraction
    block_tokens: PositiveInt
    max_decode_batch: PositiveInt


class GpuSpec(BaseModel):
    """Datasheet figures of one GPU type and its tensor-parallel scaling."""

    model_config = DOC_CONFIG

    name: Name
    aliases: NameList = ()
    memory_mib: PositiveInt
    dense_tflops: dict[DtypeName, PositiveFloat]
    hbm_gb_per_s: PositiveFloat
    tp_efficiency: dict[PositiveInt, UnitFraction]
    allreduce_latency_us: NonNegativeFloat

    @field_validator("dense_tflops")
    @classmethod
    def _has_bf16(cls, value: dict[str, float]) -> dict[str, float]:
        if "bf16" not in value:
            raise PydanticCustomError("bf16", "must list bf16 (the fallback compute dtype)")
        return value

    @field_validator("tp_efficiency")
    @classmethod
    def _scales_up(cls, value: dict[int, float]) -> dict[int, float]:
        speedups = [tp * value[tp] for tp in sorted(value)]
        if 1 not in value or any(b < a for a, b in itertools.pairwise(speedups)):
            raise PydanticCustomError(
                "tp_efficiency", "must include TP 1, and tp × efficiency must not fall as tp grows")
        return value

    def peak_flops(self, dtype: str) -> float:
        """Dense FLOP/s in ``dtype`` if the GPU has tensor cores for it, else in bf16."""
        return self.dense_tflops.get(dtype, self.dense_tflops["bf16"]) * 1e12


class PrefillCoefficients(BaseModel):
    """``t = max(floor_ms, a_ms + b·n + c·n² + 2·c·n·context)`` in milliseconds."""

    model_config = DOC_CONFIG

    a_ms: NonNegativeFloat
    b_ms_per_token: PositiveFloat
    c_ms_per_token_sq: NonNegativeFloat
    floor_ms: NonNegativeFloat | None = None


class DecodeCoefficients(BaseModel):
    """``step = base_ms + per_seq_ms·batch + per_token_ms·batch·context`` in milliseconds."""

    model_config = DOC_CONFIG

    base_ms: PositiveFloat
    per_seq_ms: NonNegativeFloat
    per_token_ms: NonNegativeFloat


class MeasuredProfile(BaseModel):
    """Coefficients the operator measured for one (model, GPU, TP); they beat derived ones."""

    model_config = DOC_CONFIG

    model: Name
    gpu: Name
    tp: PositiveInt
    source: Name
    prefill: PrefillCoefficients | None = None
    decode: DecodeCoefficients | None = None


class CapacityConfig(BaseModel):
    """The capacity document: defaults, GPU types and measured profiles."""

    model_config = DOC_CONFIG

    version: Literal[1]
    defaults: CapacityDefaults
    gpus: dict[str, GpuSpec] = Field(min_length=1)
    profiles: tuple[MeasuredProfile, ...] = Field(default=(), strict=False)

    def gpu(self, name: str) -> GpuSpec:
        """A GPU type by name or alias, any case; :class:`NotFoundError` if unknown."""
        wanted = name.strip().lower()
        for spec in self.gpus.values():
            if wanted in {spec.name.lower(), *(alias.lower() for alias in spec.aliases)}:
                return spec
        raise NotFoundError("GPU type", name, f"known: {', '.join(sorted(self.gpus))}")

    def profile_for(self, model: str, gpu: str, tp: int) -> MeasuredProfile | None:
        """The measured profile of (model, GPU type, TP), if the operator gave one."""
        canonical = self.gpu(gpu).name
        for profile in self.profiles:
            if (profile.model.lower() == model.lower() and profile.tp == tp
                    and self.gpu(profile.gpu).name == canonical):
                return profile
        return None


def load_capacity(path: str | Path | None = None) -> CapacityConfig:
    """Load a capacity document; ``None`` loads the packaged ``config/capacity.yaml``."""
    if path is None:
        return parse_capacity(packaged_text("capacity.yaml"), "config/capacity.yaml")
    return parse_capacity(read_text(path, "a capacity document"), str(path))


def parse_capacity(text: str, source: str) -> CapacityConfig:
    """Parse capacity-document text; every problem is reported at once with its path."""
    data = parse_document(text, source, "a capacity document (version: 1, defaults, gpus)")
    if isinstance(data, dict) and isinstance(data.get("gpus"), dict):
        data = {**data, "gpus": {key: {**spec, "name": str(key)} if isinstance(spec, dict)
                                 else spec for key, spec in data["gpus"].items()}}
    issues = _reference_issues(data)
    try:
        config = CapacityConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(source, issues_from(exc) + issues) from exc
    if issues:
        raise ValidationError(source, issues)
    return config


def _reference_issues(data: Any) -> list[Issue]:
    """Profiles must name a known GPU at a modelled TP size, once per (model, GPU, TP)."""
    gpus = data.get("gpus") if isinstance(data, dict) else None
    profiles = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(gpus, dict) or not isinstance(profiles, list):
        return []
    index = {str(alias).lower(): key for key, spec in gpus.items() if isinstance(spec, dict)
             for alias in [key, *(spec.get("aliases") or [])]}
    issues, seen = [], set()
    for i, entry in enumerate(profiles):
        if not isinstance(entry, dict) or not isinstance(entry.get("tp"), int):
            continue  # the entry's own shape is reported by validation
        key = index.get(str(entry.get("gpu", "")).lower())
        tps = gpus[key].get("tp_efficiency") if key is not None else None
        if key is None:
            issues.append(Issue(f"profiles[{i}].gpu", f"unknown GPU type {entry.get('gpu')!r}"))
        elif isinstance(tps, dict) and entry["tp"] not in tps:
            issues.append(Issue(f"profiles[{i}].tp", f"{key} models TP sizes {sorted(tps)}"))
        triple = (str(entry.get("model", "")).lower(), key, entry["tp"])
        if key is not None and triple in seen:
            issues.append(Issue(f"profiles[{i}]", "repeats an earlier (model, gpu, tp) entry"))
        seen.add(triple)
    return issues
