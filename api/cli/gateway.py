"""``toposched gateway``: the scheduler service with the OpenAI-compatible P/D gateway."""

from __future__ import annotations

import argparse

from api.cli.serve import add_policy_argument, run_service


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``gateway`` command."""
    parser = subparsers.add_parser(
        "gateway", help="serve OpenAI endpoints in front of P/D engine pairs",
        description="Serve /v1/completions, /v1/chat/completions and /v1/models in front "
                    "of the engine instances (vLLM, SGLang, fake), next to the whole "
                    "scheduler API. Replicas share state through --redis. Other settings "
                    "come from TOPOSCHED_* environment variables (docs/gateway.md).")
    parser.add_argument("--instances", required=True, metavar="FILE",
                        help="engine instance document (YAML, version 1)")
    parser.add_argument("--fabric", default=None, help="fabric.json the instances sit on")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="the model's tokenizer.json (or its directory); default: ask "
                             "the engine's /tokenize")
    parser.add_argument("--pd-min-uncached-tokens", type=int, default=None, metavar="N",
                        help="run decode-only when the decode engine lacks fewer than N "
                             "prompt tokens (default 256; 0: always disaggregate)")
    parser.add_argument("--kv-lease-s", type=float, default=None, metavar="S",
                        help="the engines' KV lease (vLLM kv_lease_duration, default 30)")
    parser.add_argument("--prefix-pull", action=argparse.BooleanOptionalAction, default=None,
                        help="let a prefill engine copy a cached prefix from the engine "
                             "holding it (vLLM: over NIXL) where the router finds that "
                             "cheaper than recomputing it (default: on; env "
                             "TOPOSCHED_PREFIX_PULL=0 or --no-prefix-pull turn it off)")
    parser.add_argument("--pull-overhead-s", type=float, default=None, metavar="S",
                        help="pin a prefix pull's fixed cost on top of its fabric time "
                             "(default: learned from the pulls run; env "
                             "TOPOSCHED_PULL_OVERHEAD_S)")
    add_policy_argument(parser)
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="share state with other replicas through this Redis")
    parser.add_argument("--log-level", default="warning",
                        choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(handler=handle_gateway)


def handle_gateway(args: argparse.Namespace) -> int:
    """Run the service with the gateway until interrupted."""
    return run_service(args, gateway=True, instances=args.instances,
                       tokenizer=args.tokenizer,
                       pd_min_uncached_tokens=args.pd_min_uncached_tokens,
                       kv_lease_s=args.kv_lease_s, prefix_pull=args.prefix_pull,
                       pull_overhead_s=args.pull_overhead_s, policy=args.policy)
