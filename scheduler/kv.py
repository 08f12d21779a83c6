"""KV-cache sizing: bytes per token, per block, per GPU, and the time to move them.

GQA models cache K and V for every KV head of every layer::

    bytes/token = 2 × layers × kv_heads × head_dim × bytes per element

MLA models (DeepSeek-V2/V3) cache one compressed latent per layer, with no K/V pair::

    bytes/token = layers × (kv_lora_rank + qk_rope_head_dim) × bytes per element

Llama-3-70B in bf16: 2 × 80 × 8 × 128 × 2 B = 320 KiB/token, so an 8K prompt is 2.5 GiB.
Model shapes and their catalog live in :mod:`scheduler.models_config`; the names are
re-exported here so callers can size KV from one import.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

from scheduler.models_config import (
    DTYPE_BYTES,
    ModelCatalog,
    ModelShape,
    load_models,
    normalize_dtype,
)
from topology.errors import InputError

__all__ = [
    "REFERENCE_LINKS",
    "KvEstimate",
    "LinkSpeed",
    "ModelCatalog",
    "ModelShape",
    "block_bytes",
    "blocks_for",
    "estimate_kv",
    "format_bytes",
    "kv_bytes",
    "kv_bytes_per_token",
    "kv_bytes_per_token_per_gpu",
    "load_models",
    "resolve_dtype",
    "transfer_ms",
]

#: vLLM's default paged-attention block size, in tokens.
DEFAULT_BLOCK_TOKENS = 16


class LinkSpeed(BaseModel):
    """A reference link for transfer-time estimates: one-way bandwidth in GB/s (10⁹ B/s)."""

    model_config = ConfigDict(frozen=True)

    name: str
    label: str
    gb_per_s: float


#: One-way line rates, the same figures as config/links.yaml: NVLink 4 is 18 × 25 GB/s
#: per direction, PCIe Gen5 x16 ~63 GB/s before protocol overhead, NICs at line rate.
REFERENCE_LINKS: tuple[LinkSpeed, ...] = (
    LinkSpeed(name="nvlink", label="NVLink 4 (450 GB/s)", gb_per_s=450.0),
    LinkSpeed(name="pcie_gen5_x16", label="PCIe Gen5 x16 (63 GB/s)", gb_per_s=63.0),
    LinkSpeed(name="nic_400g", label="400 Gb/s NIC (50 GB/s)", gb_per_s=50.0),
    LinkSpeed(name="nic_100g", label="100 Gb/s NIC (12.5 GB/s)", gb_per_s=12.5),
)


def resolve_dtype(model: ModelShape, dtype: str | None = None) -> str:
    """The canonical KV dtype: ``dtype`` if given (``auto`` means the model's default)."""
    if dtype is None or dtype.strip().lower() == "auto":
        return model.default_dtype
    return normalize_dtype(dtype)


def _shape(model: ModelShape, field: str) -> int:
    value = getattr(model, field)
    if not isinstance(value, int):
        raise InputError(f"model {model.name!r} has no {field}, which "
                         f"{model.attention} attention needs")
    return value


def _elements_per_token(model: ModelShape, kv_heads: int | None = None) -> int:
    """Cached elements per token over all layers (``kv_heads`` overrides for one shard)."""
    if model.attention == "mla":
        latent = _shape(model, "kv_lora_rank") + _shape(model, "qk_rope_head_dim")
        return model.num_layers * latent
    heads = kv_heads if kv_heads is not None else _shape(model, "num_kv_heads")
    return 2 * model.num_layers * heads * _shape(model, "head_dim")


def kv_bytes_per_token(model: ModelShape, dtype: str | None = None) -> int:
    """KV bytes one token occupies across the whole model (all layers, all KV heads)."""
    return _elements_per_token(model) * DTYPE_BYTES[resolve_dtype(model, dtype)]


def kv_bytes_per_token_per_gpu(model: ModelShape, tp: int, dtype: str | None = None) -> int:
    """KV bytes one token occupies on each GPU of a tensor-parallel group of ``tp``.

    Tensor parallelism splits GQA KV heads across ranks; with more ranks than KV heads
    each rank keeps one head, replicated (as vLLM does). The MLA latent is not split by
    heads, so each rank holds all of it.
    """
    if tp < 1:
        raise InputError(f"tensor-parallel size must be at least 1, got {tp}")
    width = DTYPE_BYTES[resolve_dtype(model, dtype)]
    if model.attention == "mla":
        return _elements_per_token(model) * width
    heads_per_rank = math.ceil(_shape(model, "num_kv_heads") / tp)
    return _elements_per_token(model, heads_per_rank) * width


def kv_bytes(model: ModelShape, tokens: int, dtype: str | None = None) -> int:
    """KV bytes of ``tokens`` tokens (no block rounding)."""
    if tokens < 0:
        raise InputError(f"tokens must be zero or more, got {tokens}")
    return tokens * kv_bytes_per_token(model, dtype)


def block_bytes(model: ModelShape, block_tokens: int, dtype: str | None = None) -> int:
    """Bytes of one paged KV block holding ``block_tokens`` tokens."""
    if block_tokens < 1:
        raise InputError(f"block size must be at least 1 token, got {block_tokens}")
    return block_tokens * kv_bytes_per_token(model, dtype)


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks needed to hold ``tokens`` tokens (the last one may be partly filled)."""
    if tokens < 0:
        raise InputError(f"tokens must be zero or more, got {tokens}")
    if block_tokens < 1:
        raise InputError(f"block size must be at least 1 token, got {block_tokens}")
    return -(-tokens // block_tokens)


def transfer_ms(total_bytes: int, gb_per_s: float) -> float:
    """Milliseconds to move ``total_bytes`` at a one-way line rate (no latency, no overhead)."""
    return total_bytes / (gb_per_s * 1e9) * 1e3


class KvEstimate(BaseModel):
    """The KV footprint of a prompt and the time to move it at reference link speeds."""

    model_config = ConfigDict(frozen=True)

    model: str
    dtype: str
    tokens: int
    bytes_per_token: int
    total_bytes: int
    blocks: int
    block_tokens: int
    block_bytes: int
    transfer_ms: dict[str, float]


def estimate_kv(model: ModelShape, tokens: int, dtype: str | None = None,
                block_tokens: int = DEFAULT_BLOCK_TOKENS,
                links: tuple[LinkSpeed, ...] = REFERENCE_LINKS) -> KvEstimate:
    """Size the KV cache of ``tokens`` tokens and time its transfer over ``links``."""
    canonical = resolve_dtype(model, dtype)
    total = kv_bytes(model, tokens, canonical)
    return KvEstimate(
        model=model.name, dtype=canonical, tokens=tokens,
        bytes_per_token=kv_bytes_per_token(model, canonical), total_bytes=total,
        blocks=blocks_for(tokens, block_tokens), block_tokens=block_tokens,
        block_bytes=block_bytes(model, block_tokens, canonical),
        transfer_ms={link.name: transfer_ms(total, link.gb_per_s) for link in links},
    )


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(count: float) -> str:
    """Binary-unit rendering for people: ``320 KiB``, ``2.5 GiB``, ``68.62 KiB``."""
    value = float(count)
    unit = 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {_UNITS[unit]}"
