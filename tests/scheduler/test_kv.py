"""KV sizing, the models document and its loader, and the ``toposched kv`` command."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from api.cli import main as cli
from scheduler.kv import (
    block_bytes,
    blocks_for,
    estimate_kv,
    format_bytes,
    kv_bytes,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    transfer_ms,
)
from scheduler.models_config import ModelCatalog, ModelShape, load_models, parse_models
from topology.errors import InputError, Issue, NotFoundError, ParseError, ValidationError

KIB = 1024
CATALOG = load_models()

# Hand-computed from each model's config.json (bf16, 2 B per element):
#   GQA: 2 × layers × kv_heads × head_dim × 2 B; MLA: layers × (kv_lora_rank + rope) × 2 B.
SHIPPED_KV_BF16 = {
    "llama-3-8b": 2 * 32 * 8 * 128 * 2,          # 131,072 B = 128 KiB
    "llama-3-70b": 2 * 80 * 8 * 128 * 2,         # 327,680 B = 320 KiB
    "llama-3.1-405b": 2 * 126 * 8 * 128 * 2,     # 516,096 B = 504 KiB
    "llama-3.1-405b-fp8": 2 * 126 * 8 * 128 * 2,  # fp8 weights, bf16 KV by default
    "qwen2.5-72b": 2 * 80 * 8 * 128 * 2,         # 327,680 B = 320 KiB
    "qwen2.5-7b": 2 * 28 * 4 * 128 * 2,          # 57,344 B = 56 KiB
    "mixtral-8x7b": 2 * 32 * 8 * 128 * 2,        # 131,072 B = 128 KiB
    "deepseek-v2": 60 * (512 + 64) * 2,          # 69,120 B = 67.5 KiB
    "deepseek-v3": 61 * (512 + 64) * 2,          # 70,272 B ≈ 68.6 KiB
}


def model_entry(**overrides: Any) -> dict[str, Any]:
    """A GQA model entry shaped like a small Llama, as written in a models document."""
    entry: dict[str, Any] = {"attention": "gqa", "num_layers": 16, "num_attention_heads": 32,
                             "num_kv_heads": 8, "head_dim": 64, "params_b": 1.24}
    entry.update(overrides)
    return entry


def models_document(models: dict[str, Any] | None = None, **top: Any) -> str:
    """A models document as YAML text."""
    document: dict[str, Any] = {"version": 1, "models": models or {"tiny": model_entry()}}
    document.update(top)
    return yaml.safe_dump(document, sort_keys=False)


def mla_shape(**overrides: Any) -> ModelShape:
    fields: dict[str, Any] = {"name": "mla-test", "attention": "mla", "num_layers": 61,
                              "num_attention_heads": 128, "kv_lora_rank": 512,
                              "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                              "v_head_dim": 128, "params_b": 671.0}
    fields.update(overrides)
    return ModelShape(**fields)


# --- sizes of the shipped models -------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), sorted(SHIPPED_KV_BF16.items()))
def test_shipped_model_kv_bytes_per_token(name: str, expected: int) -> None:
    assert kv_bytes_per_token(CATALOG.get(name)) == expected


def test_every_shipped_model_has_a_hand_computed_size() -> None:
    assert set(CATALOG.names()) == set(SHIPPED_KV_BF16)


def test_headline_figures() -> None:
    assert kv_bytes_per_token(CATALOG.get("llama-3-8b")) == 128 * KIB
    assert kv_bytes_per_token(CATALOG.get("llama-3-70b")) == 320 * KIB
    assert kv_bytes_per_token(CATALOG.get("deepseek-v3")) / KIB == pytest.approx(68.625)
    assert kv_bytes(CATALOG.get("llama-3-70b"), 8192) == 2.5 * 1024**3


def test_deepseek_r1_is_an_alias_of_v3() -> None:
    assert CATALOG.get("DeepSeek-R1") == CATALOG.get("deepseek-v3")
    assert kv_bytes_per_token(CATALOG.get("deepseek-ai/DeepSeek-R1")) == 70_272


# --- dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "width"), [
    ("bf16", 2), ("fp16", 2), ("float16", 2), ("bfloat16", 2), ("fp8", 1), ("fp8_e4m3", 1),
    ("FP8-E5M2", 1), ("e4m3", 1), ("int8", 1), ("fp32", 4), ("float32", 4), ("auto", 2),
])
def test_dtype_widths(dtype: str, width: int) -> None:
    llama = CATALOG.get("llama-3-8b")
    assert kv_bytes_per_token(llama, dtype) == 2 * 32 * 8 * 128 * width


def test_mla_in_fp8_is_one_byte_per_latent_element() -> None:
    assert kv_bytes_per_token(CATALOG.get("deepseek-v3"), "fp8") == 61 * 576


def test_unknown_dtype_names_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"unknown dtype 'fp4'.*bf16.*fp8"):
        kv_bytes_per_token(CATALOG.get("llama-3-8b"), "fp4")


def test_model_default_dtype_is_used_when_none_is_asked() -> None:
    catalog = parse_models(models_document(default_dtype="fp8"), "m.yaml")
    assert catalog.get("tiny").default_dtype == "fp8"
    assert kv_bytes_per_token(catalog.get("tiny")) == 2 * 16 * 8 * 64 * 1
    assert kv_bytes_per_token(catalog.get("tiny"), "bf16") == 2 * 16 * 8 * 64 * 2


# --- tokens, blocks, shards, transfer time ------------------------------------------------


def test_block_bytes_and_block_count() -> None:
    llama = CATALOG.get("llama-3-8b")
    assert block_bytes(llama, 16) == 2 * 1024**2
    assert blocks_for(0, 16) == 0
    assert blocks_for(16, 16) == 1
    assert blocks_for(17, 16) == 2


@pytest.mark.parametrize("call", [
    lambda m: kv_bytes(m, -1), lambda m: block_bytes(m, 0), lambda m: blocks_for(-5, 16),
    lambda m: blocks_for(10, 0), lambda m: kv_bytes_per_token_per_gpu(m, 0),
])
def test_bad_sizes_are_input_errors(call: Callable[[ModelShape], int]) -> None:
    with pytest.raises(InputError):
        call(CATALOG.get("llama-3-8b"))


def test_tensor_parallel_shards_split_kv_heads_and_replicate_past_them() -> None:
    llama70 = CATALOG.get("llama-3-70b")
    assert kv_bytes_per_token_per_gpu(llama70, 4) == 320 * KIB // 4
    assert kv_bytes_per_token_per_gpu(llama70, 8) == 320 * KIB // 8
    # Qwen2.5-7B has 4 KV heads: at TP 8 each rank keeps one head, replicated.
    assert kv_bytes_per_token_per_gpu(CATALOG.get("qwen2.5-7b"), 8) == 2 * 28 * 1 * 128 * 2
    # The MLA latent is not split by heads: every rank holds all of it.
    assert kv_bytes_per_token_per_gpu(CATALOG.get("deepseek-v3"), 8) == 70_272


@given(tp=st.integers(min_value=1, max_value=64),
       name=st.sampled_from(sorted(SHIPPED_KV_BF16)))
def test_shards_never_lose_bytes(tp: int, name: str) -> None:
    model = CATALOG.get(name)
    per_gpu = kv_bytes_per_token_per_gpu(model, tp)
    total = kv_bytes_per_token(model)
    assert per_gpu * tp >= total
    if model.attention == "gqa" and model.num_kv_heads and model.num_kv_heads % tp == 0:
        assert per_gpu * tp == total


def test_transfer_time_is_bytes_over_line_rate() -> None:
    two_and_a_half_gib = 2_684_354_560
    assert transfer_ms(two_and_a_half_gib, 50.0) == pytest.approx(53.687, abs=1e-3)
    estimate = estimate_kv(CATALOG.get("llama-3-70b"), 8192)
    assert estimate.transfer_ms == pytest.approx({
        "nvlink": 5.965, "pcie_gen5_x16": 42.609, "nic_400g": 53.687, "nic_100g": 214.748,
    }, abs=1e-3)


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (131_072, "128 KiB"), (70_272, "68.62 KiB"),
    (2_684_354_560, "2.5 GiB"), (3 * 1024**4, "3 TiB"),
])
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


# --- model shapes and the catalog -----------------------------------------------------------


def test_mla_shape_needs_latent_fields_and_refuses_gqa_ones() -> None:
    assert kv_bytes_per_token(mla_shape()) == 70_272
    with pytest.raises(Exception, match="kv_lora_rank") as missing:
        mla_shape(kv_lora_rank=None)
    assert "is required for mla attention" in str(missing.value)
    with pytest.raises(Exception, match="is not used by mla attention"):
        mla_shape(num_kv_heads=128)


def test_lookup_ignores_case_and_goes_through_aliases() -> None:
    assert CATALOG.get("LLAMA-3-8B").name == "llama-3-8b"
    assert CATALOG.get("meta-llama/Meta-Llama-3-70B-Instruct").name == "llama-3-70b"
    assert CATALOG.get("  Mixtral  ").name == "mixtral-8x7b"
    assert "Qwen/Qwen2.5-72B-Instruct" in CATALOG
    assert "deepseek-r1" in CATALOG.aliases("deepseek-v3")


def test_unknown_model_lists_close_matches() -> None:
    with pytest.raises(NotFoundError) as raised:
        CATALOG.get("llama-3-80b")
    assert raised.value.kind == "model"
    assert "did you mean" in str(raised.value)
    assert "llama-3-8b" in str(raised.value)


def test_mixture_of_experts_uses_active_parameters_for_flops() -> None:
    mixtral = CATALOG.get("mixtral-8x7b")
    assert mixtral.active_params == pytest.approx(12.9e9)
    assert mixtral.weight_bytes == pytest.approx(46.7e9 * 2)
    assert CATALOG.get("deepseek-v3").weight_bytes == pytest.approx(671e9)


# --- the loader -------------------------------------------------------------------------------


def test_loader_reports_every_problem_at_once_with_paths() -> None:
    text = models_document(
        {
            "broken-gqa": model_entry(num_layers=0, head_dim="128", num_kv_heads=7),
            "broken-mla": {"attention": "mla", "num_layers": 61, "num_attention_heads": 128,
                           "kv_lora_rank": 512, "params_b": -3, "aliases": ["Broken-GQA"]},
            "not-a-mapping": 7,
            "odd-attention": model_entry(attention="mqa", colour="blue"),
        },
        default_dtype="fp9", version=2)
    with pytest.raises(ValidationError) as raised:
        parse_models(text, "bad-models.yaml")
    error = raised.value
    assert error.source == "bad-models.yaml"
    expected = {
        Issue("version", "must be 1"),
        Issue("models.broken-gqa.num_layers", "must be a positive integer"),
        Issue("models.broken-gqa.head_dim", "must be a positive integer"),
        Issue("models.broken-gqa.num_kv_heads", "must divide num_attention_heads (32)"),
        Issue("models.broken-mla.qk_rope_head_dim", "is required for mla attention"),
        Issue("models.broken-mla.qk_nope_head_dim", "is required for mla attention"),
        Issue("models.broken-mla.v_head_dim", "is required for mla attention"),
        Issue("models.broken-mla.params_b", "must be a positive number"),
        Issue("models.broken-mla.aliases[0]",
              "'Broken-GQA' is already a name or alias of 'broken-gqa'"),
        Issue("models.not-a-mapping", "must be a mapping"),
        Issue("models.odd-attention.attention", "must be 'gqa' or 'mla'"),
        Issue("models.odd-attention.colour", "is not a known field"),
    }
    assert expected <= set(error.issues)
    dtype_issues = [issue for issue in error.issues if issue.path == "default_dtype"]
    assert len(dtype_issues) == 1 and "unknown dtype 'fp9'" in dtype_issues[0].message
    # The bad document default is reported once, not again under every model.
    assert not any(issue.path.endswith(".default_dtype") for issue in error.issues)
    assert "bad-models.yaml: " in str(error) and "problem(s)" in str(error)


_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-10**20, max_value=10**20)
            | st.floats() | st.text(max_size=6))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
_FIELDS = st.sampled_from(["attention", "num_layers", "num_attention_heads", "num_kv_heads",
                           "head_dim", "kv_lora_rank", "qk_rope_head_dim", "params_b",
                           "aliases", "default_dtype", "weight_dtype", "active_params_b"])


@given(entry=st.dictionaries(_FIELDS, _VALUES, max_size=6), default_dtype=_SCALARS)
def test_any_garbage_entry_is_a_validation_error(entry: dict[str, Any],
                                                 default_dtype: Any) -> None:
    text = yaml.safe_dump({"version": 1, "default_dtype": default_dtype,
                           "models": {"m": {**model_entry(), **entry}}})
    try:
        catalog = parse_models(text, "fuzz.yaml")
    except ValidationError as error:
        assert error.issues and all(issue.path for issue in error.issues)
    else:
        assert kv_bytes_per_token(catalog.get("m")) > 0


def test_duplicate_model_names_are_refused_with_their_line() -> None:
    text = "version: 1\nmodels:\n  a: {}\n  b: {}\n  a: {}\n"
    with pytest.raises(ParseError) as raised:
        parse_models(text, "dup.yaml")
    assert raised.value.location.line == 5
    assert "duplicate key 'a'" in str(raised.value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "document is empty"),
    ("version: 1\nmodels: [unclosed\n", "invalid YAML"),
])
def test_unreadable_documents_are_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(ParseError, match=fragment):
        parse_models(text, "x.yaml")


def test_an_empty_model_list_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        parse_models("version: 1\nmodels: {}\n", "empty.yaml")
    assert raised.value.issues == (Issue("models", "must not be empty"),)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match=r"nowhere\.yaml: cannot read file"):
        load_models(tmp_path / "nowhere.yaml")


def test_a_user_models_file(tmp_path: Path) -> None:
    path = tmp_path / "my-models.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        default_dtype: bf16
        models:
          house-13b:
            # our fine-tune: 40 layers, 40 heads, 8 KV heads of 128
            aliases: [house]
            num_layers: 40
            num_attention_heads: 40
            num_kv_heads: 8
            head_dim: 128
            params_b: 13.0
            default_dtype: fp8
        """), encoding="utf-8")
    catalog = load_models(path)
    assert catalog.names() == ["house-13b"]
    assert kv_bytes_per_token(catalog.get("HOUSE")) == 2 * 40 * 8 * 128 * 1
    assert catalog.source == str(path)


def test_catalog_refuses_an_alias_to_nothing() -> None:
    with pytest.raises(InputError, match="unknown model"):
        ModelCatalog([mla_shape()], {"x": "missing"})


# --- the command ------------------------------------------------------------------------------


@pytest.fixture
def kv_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register only the kv command, so these tests do not depend on other groups."""
    monkeypatch.setattr(cli, "COMMANDS", {"kv": cli.COMMANDS["kv"]})


def test_kv_is_registered() -> None:
    assert "kv" in cli.COMMANDS


@pytest.mark.usefixtures("kv_only")
def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["kv", "Llama-3-70B", "--tokens", "8192", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out == {
        "model": "llama-3-70b", "dtype": "bf16", "tokens": 8192, "bytes_per_token": 327_680,
        "total_bytes": 2_684_354_560, "blocks": 512, "block_tokens": 16,
        "block_bytes": 5_242_880, "transfer_ms": pytest.approx(
            {"nvlink": 5.965, "pcie_gen5_x16": 42.609, "nic_400g": 53.687,
             "nic_100g": 214.748}, abs=1e-3),
    }


@pytest.mark.usefixtures("kv_only")
def test_cli_json_fp8_mla_custom_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["kv", "deepseek-r1", "--tokens", "1000", "--dtype", "e4m3",
                    "--block-tokens", "64", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (out["model"], out["dtype"], out["bytes_per_token"]) == ("deepseek-v3", "fp8", 35_136)
    assert (out["blocks"], out["block_tokens"], out["total_bytes"]) == (16, 64, 35_136_000)


@pytest.mark.usefixtures("kv_only")
def test_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["kv", "llama-3-70b", "--tokens", "8192"]) == 0
    out = capsys.readouterr().out
    assert "320 KiB (327,680 B)" in out
    assert "2.5 GiB (2,684,354,560 B)" in out
    assert "512 × 16 tokens, 5 MiB each" in out
    assert "400 Gb/s NIC (50 GB/s)" in out and "53.687 ms" in out


@pytest.mark.usefixtures("kv_only")
@pytest.mark.parametrize(("argv", "fragment"), [
    (["kv", "llama-3-8b", "--tokens", "-5"], "tokens must be zero or more, got -5"),
    (["kv", "llama-3-8b", "--tokens", "5", "--dtype", "fp9"], "unknown dtype 'fp9'"),
    (["kv", "lama-3-8b", "--tokens", "5"], "unknown model 'lama-3-8b'; did you mean"),
    (["kv", "llama-3-8b", "--tokens", "5", "--block-tokens", "0"], "block size"),
])
def test_cli_bad_input_exits_2_with_one_line(argv: list[str], fragment: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("toposched: error: ") and fragment in captured.err


@pytest.mark.usefixtures("kv_only")
def test_cli_user_models_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(models_document(), encoding="utf-8")
    assert cli.run(["kv", "TINY", "--tokens", "10", "--models", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes_per_token"] == 2 * 16 * 8 * 64 * 2


@pytest.mark.usefixtures("kv_only")
def test_cli_bad_models_file_exits_2_naming_paths(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(models_document({"tiny": model_entry(num_layers=-1)}), encoding="utf-8")
    assert cli.run(["kv", "tiny", "--tokens", "10", "--models", str(path)]) == 2
    assert "models.tiny.num_layers: must be a positive integer" in capsys.readouterr().err
