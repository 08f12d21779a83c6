"""How long an engine step takes: chunked prefill and a decode step curve.

An engine advances in *steps*. A step carries one token of every running decode and,
with the rest of the ``max_num_batched_tokens`` budget, chunks of one or more
prefills (vLLM's chunked-prefill scheduler). Its time is the prefill part plus the
decode part:

* prefill (``T`` = new tokens in the step, ``n_i`` / ``c_i`` = a chunk's new tokens
  and the context before it)::

      max(floor, c0 + c1·T + c2·Q + c_ctx·Σ n_i·c_i)

  with ``Q = T²`` (``squared: batch``, Dynamo's mocker) or ``Σ n_i²``
  (``squared: sequence``: causal attention of each prompt with itself);
* decode, when the step has running decodes (``B`` of them, ``A`` = the sum of their
  context lengths, ``u = A / KV capacity in tokens``)::

      base + per_seq·B + per_token·A + u1·u + u2·u²

Between two batch changes a run of pure-decode steps has a closed-form duration
(:meth:`EngineTiming.decode_run_ms`), so the simulator needs an event per batch
change, not per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.capacity import InstanceProfile

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class PrefillCurve(BaseModel):
    """Milliseconds of a step's prefill part (see the module docstring)."""

    model_config = _FROZEN
    c0_ms: float = Field(default=0.0, ge=0.0)
    c1_ms_per_token: float = Field(default=0.0, ge=0.0)
    c2_ms_per_token_sq: float = Field(default=0.0, ge=0.0)
    squared: Literal["batch", "sequence"] = "sequence"
    context_ms_per_token_pair: float = Field(default=0.0, ge=0.0)
    floor_ms: float = Field(default=0.0, ge=0.0)

    def ms(self, chunks: Sequence[tuple[int, int]]) -> float:
        """Prefill time of ``chunks`` of (new tokens, context before) in one step."""
        if not chunks:
            return 0.0
        total = sum(n for n, _ in chunks)
        square = (total * total if self.squared == "batch"
                  else sum(n * n for n, _ in chunks))
        pairs = sum(n * c for n, c in chunks)
        work = (self.c0_ms + self.c1_ms_per_token * total + self.c2_ms_per_token_sq * square
                + self.context_ms_per_token_pair * pairs)
        return max(self.floor_ms, work)


class DecodeCurve(BaseModel):
    """Milliseconds of a step's decode part (see the module docstring)."""

    model_config = _FROZEN
    base_ms: float = Field(default=0.0, ge=0.0)
    per_seq_ms: float = Field(default=0.0, ge=0.0)
    per_token_ms: float = Field(default=0.0, ge=0.0)
    util_ms: float = 0.0
    util_sq_ms: float = 0.0

    def coefficients(self, batch: int, capacity_tokens: int) -> tuple[float, float, float]:
        """``(α, β, γ)`` with step time ``α + β·A + γ·A²`` for ``A`` active tokens."""
        cap = max(capacity_tokens, 1)
        return (self.base_ms + self.per_seq_ms * batch,
                self.per_token_ms + self.util_ms / cap, self.util_sq_ms / (cap * cap))

    def ms(self, batch: int, active_tokens: int, capacity_tokens: int) -> float:
        """One decode step of ``batch`` sequences holding ``active_tokens`` in all."""
        if batch <= 0:
            return 0.0
        alpha, beta, gamma = self.coefficients(batch, capacity_tokens)
        return alpha + beta * active_tokens + gamma * active_tokens * active_tokens


class EngineTiming(BaseModel):
    """An engine's scheduler limits and step curves."""

    model_config = _FROZEN
    prefill: PrefillCurve
    decode: DecodeCurve
    #: Token budget of a step; ``None``: no chunking, one whole prompt per step.
    max_num_batched_tokens: int | None = Field(default=8192, ge=1)
    max_num_seqs: int = Field(default=256, ge=1)

    def step_ms(self, chunks: Sequence[tuple[int, int]], batch: int, active_tokens: int,
                capacity_tokens: int) -> float:
        """A step with prefill ``chunks`` and ``batch`` decodes over ``active_tokens``."""
        return (self.prefill.ms(chunks)
                + self.decode.ms(batch, active_tokens, capacity_tokens))

    def decode_run_ms(self, steps: int, batch: int, active_tokens: int,
                      capacity_tokens: int) -> float:
        """``steps`` pure-decode steps of ``batch`` sequences, every one adding a token to
        each, starting from ``active_tokens`` (closed form of the sum)."""
        if steps <= 0 or batch <= 0:
            return 0.0
        alpha, beta, gamma = self.decode.coefficients(batch, capacity_tokens)
        n, a0, b = steps, float(active_tokens), float(batch)
        k1 = n * (n - 1) / 2.0
        k2 = (n - 1) * n * (2 * n - 1) / 6.0
        return (n * alpha + beta * (n * a0 + b * k1)
                + gamma * (n * a0 * a0 + 2.0 * a0 * b * k1 + b * b * k2))

    def decode_slopes_s(self, active_tokens: float, capacity_tokens: int) -> tuple[float, float]:
        """Seconds one more running request, and one more context token, add to a decode
        step at ``active_tokens`` (the router's ``decode_s_per_running`` and
        ``decode_s_per_kv_token``: the step curve linearised there)."""
        d, cap = self.decode, max(capacity_tokens, 1)
        per_token = (d.per_token_ms + d.util_ms / cap
                     + 2.0 * d.util_sq_ms * active_tokens / (cap * cap))
        return d.per_seq_ms / 1e3, max(per_token, 0.0) / 1e3


def from_profile(profile: InstanceProfile, *, max_num_batched_tokens: int | None = 8192,
                 max_num_seqs: int | None = None) -> EngineTiming:
    """The capacity model's curves as engine timing: prefill ``a + b·n + c·n² + 2c·n·ctx``
    per prompt (floored), decode ``base + per_seq·B + per_token·A``."""
    p, d = profile.prefill, profile.decode
    prefill = PrefillCurve(c0_ms=p.a_ms, c1_ms_per_token=p.b_ms_per_token,
                           c2_ms_per_token_sq=p.c_ms_per_token_sq, squared="sequence",
                           context_ms_per_token_pair=2 * p.c_ms_per_token_sq,
                           floor_ms=p.floor_ms if p.floor_ms is not None else p.a_ms)
    decode = DecodeCurve(base_ms=d.base_ms, per_seq_ms=d.per_seq_ms, per_token_ms=d.per_token_ms)
    return EngineTiming(prefill=prefill, decode=decode,
                        max_num_batched_tokens=max_num_batched_tokens,
                        max_num_seqs=max_num_seqs or profile.max_batch)


class EngineSpec(BaseModel):
    """The engine a simulation runs: step curves (``None``: the capacity model's for the
    model and GPU), scheduler limits, KV capacity and eviction order."""

    model_config = _FROZEN
    prefill: PrefillCurve | None = None
    decode: DecodeCurve | None = None
    max_num_batched_tokens: int | None = Field(default=8192, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    kv_blocks: int | None = Field(default=None, ge=1)
    eviction: Literal["tail-first", "parent-first"] = "tail-first"

    def timing(self, profile: InstanceProfile) -> EngineTiming:
        """The engine timing, the capacity model's curves filling what is not given."""
        derived = from_profile(profile, max_num_batched_tokens=self.max_num_batched_tokens,
                               max_num_seqs=self.max_num_seqs)
        return derived.model_copy(update={"prefill": self.prefill or derived.prefill,
                                          "decode": self.decode or derived.decode})

    def kv_capacity_blocks(self, profile: InstanceProfile, block_tokens: int) -> int:
        """KV blocks per instance: as given, else what the capacity model leaves for KV."""
        return self.kv_blocks or profile.kv_capacity_tokens // block_tokens
