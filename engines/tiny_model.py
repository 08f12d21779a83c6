"""Write a tiny random-weight Llama checkpoint with a byte-level tokenizer.

A script for the vLLM environment's interpreter (it needs torch and safetensors, which
toposched's own environment does not have), never imported by toposched:
``python engines/tiny_model.py OUT_DIR [SEED]`` (:func:`engines.launch.write_tiny_model`
runs it). Random weights, not vLLM's ``--load-format dummy``: dummy weights make every
output depend on the last token only, so comparing a disaggregated run's tokens with a
direct run's would prove nothing (ENGINES.md). A few MB; head_dim 64 as vLLM's CPU
attention wants; float32, because with bfloat16 and 32-token blocks vLLM picks its AMX
attention kernel, and that kernel died with SIGILL in the decode engine right after a
NIXL KV load on our machines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

SPECIALS = ("<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
    "vocab_size": 320, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
    "bos_token_id": 256, "eos_token_id": 257, "torch_dtype": "float32",
}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    hidden, inner, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden),
                                          "model.norm.weight": (hidden,),
                                          "lm_head.weight": (vocab, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        shapes.update({
            f"{layer}.self_attn.q_proj.weight": (q, hidden),
            f"{layer}.self_attn.k_proj.weight": (kv, hidden),
            f"{layer}.self_attn.v_proj.weight": (kv, hidden),
            f"{layer}.self_attn.o_proj.weight": (hidden, q),
            f"{layer}.mlp.gate_proj.weight": (inner, hidden),
            f"{layer}.mlp.up_proj.weight": (inner, hidden),
            f"{layer}.mlp.down_proj.weight": (hidden, inner),
            f"{layer}.input_layernorm.weight": (hidden,),
            f"{layer}.post_attention_layernorm.weight": (hidden,)})
    return shapes


def _weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in _shapes(CONFIG).items():
        if len(shape) == 1:  # norms: ones, as a trained model's are near one
            out[name] = torch.ones(shape, dtype=torch.float32)
        else:  # scaled so that logits differ clearly between tokens
            out[name] = torch.randn(shape, generator=generator) / shape[-1] ** 0.5 * 2.0
    return out


def _byte_symbols() -> list[str]:
    """The byte-level pre-tokenizer's symbol for each byte value, in byte order: printable
    bytes stand for themselves, the others for code points 256, 257, ... in order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    symbols, extra = [], 0
    for value in range(256):
        if value in printable:
            symbols.append(chr(value))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _tokenizer(out: Path) -> None:
    """Token id ``b`` is byte ``b`` (ids 0-255), then the special tokens."""
    vocab = {symbol: value for value, symbol in enumerate(_byte_symbols())}
    assert set(vocab) == set(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                       use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIALS))
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
        "eos_token": "</s>", "model_max_length": 4096, "chat_template": CHAT_TEMPLATE}))


def main() -> None:
    out = Path(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(CONFIG, indent=1))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 256, "eos_token_id": 257}))
    save_file(_weights(seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    _tokenizer(out)


if __name__ == "__main__":
    main()
