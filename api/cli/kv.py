"""``toposched kv``: KV-cache size of a prompt and the time to move it between workers."""

from __future__ import annotations

import argparse
import sys

from api.cli.output import print_json
from scheduler.kv import (
    DEFAULT_BLOCK_TOKENS,
    REFERENCE_LINKS,
    KvEstimate,
    estimate_kv,
    format_bytes,
)
from scheduler.models_config import load_models
from topology.errors import NotFoundError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``kv`` command."""
    parser = subparsers.add_parser(
        "kv", help="size a model's KV cache for N tokens and its transfer time",
        description="Print the KV-cache bytes per token, the total for N tokens, the paged "
                    "blocks, and the time to move them over reference links at line rate.")
    parser.add_argument("model", metavar="MODEL", help="model name or alias (any case)")
    parser.add_argument("--tokens", type=int, required=True, metavar="N",
                        help="number of tokens (prompt length)")
    parser.add_argument("--dtype", default=None,
                        help="KV dtype: bf16, fp16, fp8 (e4m3/e5m2), int8, fp32 "
                             "(default: the model's)")
    parser.add_argument("--block-tokens", type=int, default=DEFAULT_BLOCK_TOKENS, metavar="N",
                        help=f"tokens per paged KV block (default {DEFAULT_BLOCK_TOKENS})")
    parser.add_argument("--models", metavar="FILE", default=None,
                        help="models document to use instead of the packaged one")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=handle_kv)


def handle_kv(args: argparse.Namespace) -> int:
    """Run ``toposched kv``; an unknown model is bad input here (exit 2)."""
    try:
        model = load_models(args.models).get(args.model)
    except NotFoundError as exc:
        print(f"toposched: error: {exc}", file=sys.stderr)
        return 2
    estimate = estimate_kv(model, args.tokens, args.dtype, args.block_tokens)
    if args.json:
        print_json(estimate)
    else:
        print(render(estimate))
    return 0


def render(estimate: KvEstimate) -> str:
    """The estimate as a few aligned lines for people."""
    lines = [
        f"{estimate.model}, {estimate.dtype} KV cache",
        f"  per token      {format_bytes(estimate.bytes_per_token)} "
        f"({estimate.bytes_per_token:,} B)",
        f"  {estimate.tokens:,} tokens".ljust(17) + f"{format_bytes(estimate.total_bytes)} "
        f"({estimate.total_bytes:,} B)",
        f"  blocks         {estimate.blocks:,} × {estimate.block_tokens} tokens, "
        f"{format_bytes(estimate.block_bytes)} each",
        "  transfer time at line rate",
    ]
    for link in REFERENCE_LINKS:
        lines.append(f"    {link.label:<26}{estimate.transfer_ms[link.name]:>12,.3f} ms")
    return "\n".join(lines)
