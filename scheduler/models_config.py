"""Model KV shapes: the versioned ``config/models.yaml`` document and its catalog.

The document names each model once, with the numbers KV sizing and the capacity model
need (layers, KV heads, head size or the MLA latent, parameter count), plus aliases.
Lookup is case-insensitive; an unknown name is answered with the closest known ones.

The document helpers (bounded reading, YAML that refuses duplicate keys, pydantic
errors turned into path-named issues, field types whose errors read as rules) live in
:mod:`topology.documents`; the ones this module uses are re-exported from here.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from topology.documents import (
    Name,
    NameList,
    PositiveFloat,
    PositiveInt,
    issues_from,
    packaged_text,
    parse_document,
    read_text,
)
from topology.errors import InputError, Issue, NotFoundError, ValidationError

#: Document helpers that used to live here are re-exported for existing imports.
__all__ = [
    "DTYPE_ALIASES", "DTYPE_BYTES", "DtypeName", "ModelCatalog", "ModelShape", "Name",
    "NameList", "PositiveFloat", "PositiveInt", "dtype_bytes", "issues_from", "load_models",
    "normalize_dtype", "packaged_text", "parse_document", "parse_models", "read_text",
]

#: Bytes per element of each KV cache dtype this model knows.
DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "fp32": 4}

#: Spellings used by serving engines and Hugging Face configs, mapped to ours.
DTYPE_ALIASES: dict[str, str] = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
    "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "e4m3": "fp8", "e5m2": "fp8", "fp8_e4m3fn": "fp8",
    "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
}

_KNOWN_DTYPES = "bf16, fp16, fp8 (e4m3, e5m2), int8, fp32"


def normalize_dtype(name: str) -> str:
    """Return the canonical dtype name (``bf16``, ``fp8``…) or raise :class:`InputError`."""
    key = name.strip().lower().replace("-", "_")
    canonical = DTYPE_ALIASES.get(key, key)
    if canonical not in DTYPE_BYTES:
        raise InputError(f"unknown dtype {name!r}; known: {_KNOWN_DTYPES}")
    return canonical


def dtype_bytes(name: str) -> int:
    """Bytes per element of a dtype given by any accepted spelling."""
    return DTYPE_BYTES[normalize_dtype(name)]


# --- the dtype field type ----------------------------------------------------------


def _dtype_rule(value: object) -> object:
    if not isinstance(value, str):
        raise PydanticCustomError("dtype", "must be a dtype name ({known})",
                                  {"known": _KNOWN_DTYPES})
    try:
        return normalize_dtype(value)
    except InputError:
        raise PydanticCustomError("dtype", "unknown dtype {name}; known: {known}",
                                  {"name": repr(value), "known": _KNOWN_DTYPES}) from None


DtypeName = Annotated[str, BeforeValidator(_dtype_rule)]


# --- model shapes --------------------------------------------------------------------

#: The fields each attention kind needs; the others must be absent.
_ATTENTION_FIELDS: dict[str, frozenset[str]] = {
    "gqa": frozenset({"num_kv_heads", "head_dim"}),
    "mla": frozenset({"kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"}),
}
_SHAPE_FIELDS = ("num_kv_heads", "head_dim", "kv_lora_rank", "qk_rope_head_dim",
                 "qk_nope_head_dim", "v_head_dim")


def _optional() -> Any:
    # validate_default makes the attention check run when a needed field is left out.
    return Field(default=None, validate_default=True)


class ModelShape(BaseModel):
    """The architecture numbers of one model that KV sizing and capacity need.

    GQA models cache K and V for ``num_kv_heads`` heads of ``head_dim`` per layer; MLA
    models (DeepSeek-V2/V3) cache one latent of ``kv_lora_rank + qk_rope_head_dim`` per
    layer. ``params_b`` (billions) sizes the weights; ``active_params_b`` (mixture of
    experts) sizes the FLOPs per token and defaults to ``params_b``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Name
    attention: Literal["gqa", "mla"] = "gqa"
    num_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_kv_heads: PositiveInt | None = _optional()
    head_dim: PositiveInt | None = _optional()
    kv_lora_rank: PositiveInt | None = _optional()
    qk_rope_head_dim: PositiveInt | None = _optional()
    qk_nope_head_dim: PositiveInt | None = _optional()
    v_head_dim: PositiveInt | None = _optional()
    default_dtype: DtypeName = "bf16"
    weight_dtype: DtypeName = "bf16"
    params_b: PositiveFloat
    active_params_b: PositiveFloat | None = None

    @field_validator(*_SHAPE_FIELDS)
    @classmethod
    def _fits_attention(cls, value: int | None, info: ValidationInfo) -> int | None:
        attention = info.data.get("attention")
        if attention not in _ATTENTION_FIELDS or info.field_name is None:
            return value  # the attention field itself failed and is reported
        needed = info.field_name in _ATTENTION_FIELDS[attention]
        if needed and value is None:
            raise PydanticCustomError("attention_field", "is required for {kind} attention",
                                      {"kind": attention})
        if not needed and value is not None:
            raise PydanticCustomError("attention_field", "is not used by {kind} attention",
                                      {"kind": attention})
        heads = info.data.get("num_attention_heads")
        if info.field_name == "num_kv_heads" and value and heads and heads % value:
            raise PydanticCustomError("kv_heads", "must divide num_attention_heads ({heads})",
                                      {"heads": heads})
        return value

    @field_validator("active_params_b")
    @classmethod
    def _active_within_total(cls, value: float | None, info: ValidationInfo) -> float | None:
        total = info.data.get("params_b")
        if value is not None and total is not None and value > total:
            raise PydanticCustomError("active_params", "must not exceed params_b ({total})",
                                      {"total": total})
        return value

    @property
    def active_params(self) -> float:
        """Parameters touched per token (all of them unless mixture of experts)."""
        return (self.active_params_b or self.params_b) * 1e9

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights in ``weight_dtype``."""
        return self.params_b * 1e9 * DTYPE_BYTES[self.weight_dtype]


class _ModelEntry(ModelShape):
    aliases: NameList = ()


class _ModelsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal[1]
    default_dtype: DtypeName = "bf16"
    models: dict[str, _ModelEntry] = Field(min_length=1)


class ModelCatalog:
    """Model shapes by name, with case-insensitive lookup through names and aliases."""

    def __init__(self, models: Iterable[ModelShape],
                 aliases: Mapping[str, str] | None = None, source: str = "<catalog>") -> None:
        self.source = source
        self._models = {model.name: model for model in models}
        self._index = {name.lower(): name for name in self._models}
        self._aliases: dict[str, list[str]] = {name: [] for name in self._models}
        for alias, target in (aliases or {}).items():
            if target not in self._models:
                raise InputError(f"alias {alias!r} points at unknown model {target!r}")
            self._index.setdefault(alias.lower(), target)
            self._aliases[target].append(alias)

    def get(self, name: str) -> ModelShape:
        """The shape of ``name`` (any case, or an alias); :class:`NotFoundError` if unknown."""
        canonical = self._index.get(name.strip().lower())
        if canonical is None:
            close = difflib.get_close_matches(name.strip().lower(), list(self._index), n=4,
                                              cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else None
            known = f"known: {', '.join(self.names())}"
            raise NotFoundError("model", name, f"{hint} {known}" if hint else known)
        return self._models[canonical]

    def names(self) -> list[str]:
        """Canonical model names, sorted."""
        return sorted(self._models)

    def aliases(self, name: str) -> list[str]:
        """The aliases of a model (given by any of its names)."""
        return list(self._aliases[self.get(name).name])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._index

    def __len__(self) -> int:
        return len(self._models)


def load_models(path: str | Path | None = None) -> ModelCatalog:
    """Load a models document; ``None`` loads the packaged ``config/models.yaml``."""
    if path is None:
        return _packaged_models()
    return parse_models(read_text(path, "a models document"), str(path))


@functools.cache
def _packaged_models() -> ModelCatalog:
    # the packaged file never changes while the process runs; routing asks per request
    return parse_models(packaged_text("models.yaml"), "config/models.yaml")


def parse_models(text: str, source: str) -> ModelCatalog:
    """Parse models-document text; every problem is reported at once with its path."""
    data = parse_document(text, source, "a models document (version: 1, models: {...})")
    prepared = _with_names(data)
    issues = _alias_issues(prepared)
    document: _ModelsDocument | None = None
    try:
        document = _ModelsDocument.model_validate(prepared)
    except pydantic.ValidationError as exc:
        issues = issues_from(exc) + issues
    if issues or document is None:
        raise ValidationError(source, issues)
    aliases = {alias: name for name, entry in document.models.items() for alias in entry.aliases}
    shapes = [ModelShape.model_validate(entry.model_dump(exclude={"aliases"}))
              for entry in document.models.values()]
    return ModelCatalog(shapes, aliases, source)


def _with_names(data: Any) -> Any:
    """Give each model entry its key as ``name`` and the document's default dtype."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return data
    # An invalid default is reported once at default_dtype, not again under every model.
    default = _dtype_or_none(data.get("default_dtype", "bf16"))
    models = {}
    for key, entry in data["models"].items():
        if isinstance(entry, dict):
            entry = {**entry, "name": str(key)}
            if "default_dtype" not in entry and default is not None:
                entry["default_dtype"] = default
        models[key] = entry
    return {**data, "models": models}


def _dtype_or_none(value: object) -> str | None:
    try:
        return normalize_dtype(value) if isinstance(value, str) else None
    except InputError:
        return None


def _alias_issues(data: Any) -> list[Issue]:
    """Names and aliases must be unique ignoring case, across the whole document."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        return []
    owner: dict[str, str] = {}
    issues = []
    for key, entry in data["models"].items():
        aliases = entry.get("aliases", []) if isinstance(entry, dict) else []
        spelled = [(str(key), f"models.{key}")]
        if isinstance(aliases, list):
            spelled += [(a, f"models.{key}.aliases[{i}]") for i, a in enumerate(aliases)
                        if isinstance(a, str)]
        for name, path in spelled:
            lowered = name.strip().lower()
            if lowered in owner and owner[lowered] != key:
                issues.append(Issue(path, f"{name!r} is already a name or alias of "
                                          f"{owner[lowered]!r}"))
            owner.setdefault(lowered, str(key))
    return issues
