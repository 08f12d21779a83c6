"""``toposched route``: place one request on a cluster state and explain the decision.

Inputs: the fabric (``fabric.json`` from ``toposched topo build`` or
:meth:`FabricSpec.save`), a state document of workers and their cached blocks
(format in :mod:`scheduler.router.snapshot`), optionally a placement result whose
``pairings`` the policy prefers, and the request as JSON (inline or ``@FILE``).

Exit codes: 0 placed, 3 unschedulable (the result is still printed), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from api.cli.output import print_json
from policies.profile import DEFAULT_POLICY, policy_names, resolve_policy
from policies.registry import installed_registry, plugin_allowlist
from scheduler.router.router import Decision, Router, RouteResult, parse_route_request
from scheduler.router.snapshot import (
    index_from_state,
    load_state,
    read_pairings,
    snapshot_from_state,
)
from topology.distance import DistanceModel
from topology.errors import Location, ParseError
from topology.source import read_capture
from topology.spec import load_fabric

#: Exit status when the request is valid but cannot be placed now.
EXIT_UNSCHEDULABLE = 3


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``route`` command."""
    parser = subparsers.add_parser(
        "route", help="choose the (prefill, decode) pair for one request",
        description="Route one request over a cluster state with a scheduling policy and "
                    "explain the choice: pair, runners-up, cached blocks, delta transfer, "
                    "tier and estimated time to first token. Exit 3: unschedulable.")
    parser.add_argument("--fabric", required=True, metavar="F", help="fabric.json")
    parser.add_argument("--state", required=True, metavar="S",
                        help="state document (YAML/JSON): workers, load, cached blocks")
    parser.add_argument("--placement", metavar="P", default=None,
                        help="placement result whose pairings the policy prefers")
    parser.add_argument("--request", required=True, metavar="JSON",
                        help="request as JSON text, or @FILE")
    parser.add_argument("--policy", default=DEFAULT_POLICY, metavar="NAME",
                        help=f"packaged policy ({', '.join(policy_names())}) or a policy "
                             f"document path (default {DEFAULT_POLICY}); plugin packages "
                             "installed under entry-point group toposched.policies are "
                             "loaded (only those TOPOSCHED_PLUGINS lists, when set)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random choices")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=handle_route)


def handle_route(args: argparse.Namespace) -> int:
    """Run ``toposched route``."""
    distance = DistanceModel(load_fabric(args.fabric))
    state = load_state(args.state)
    pairings = read_pairings(args.placement) if args.placement else None
    snapshot = snapshot_from_state(state, distance, source=args.state, pairings=pairings)
    policy = resolve_policy(args.policy, installed_registry(plugin_allowlist()))
    router = Router(distance, policy, index=index_from_state(state), seed=args.seed)
    data = _request_data(args.request)
    if isinstance(data, dict) and state.model is not None:
        data.setdefault("model", state.model)
    result = router.route(parse_route_request(data, _source(args.request)), snapshot)
    if args.json:
        print_json(result)
    else:
        print(render(result))
    return 0 if isinstance(result, Decision) else EXIT_UNSCHEDULABLE


def _source(text: str) -> str:
    return text[1:] if text.startswith("@") else "--request"


def _request_data(text: str) -> Any:
    raw = read_capture(text[1:]) if text.startswith("@") else text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg}", Location(_source(text), exc.lineno),
                         "a request object") from exc


def render(result: RouteResult) -> str:
    """The decision as a few lines for people."""
    if not isinstance(result, Decision):
        return "\n".join([f"{result.request_id}: unschedulable ({result.policy})",
                          *(f"  - {reason}" for reason in result.reasons)])
    est, move = result.estimate, result.transfer
    lines = [
        f"{result.request_id}: {result.mode} ({result.policy})",
        f"  prefill  {result.prefill.worker} ({result.prefill.cached_blocks} blocks cached)",
        f"  decode   {result.decode.worker} ({result.decode.cached_blocks} blocks cached)",
        f"  transfer {move.blocks} blocks, {move.bytes:,} B over {move.tier}",
        f"  ttft     {est.total_s * 1e3:.3f} ms = queue {est.queue_s * 1e3:.3f} + prefill "
        f"{est.prefill_compute_s * 1e3:.3f} + transfer {est.transfer_s * 1e3:.3f} + "
        f"admission {est.admission_s * 1e3:.3f}",
    ]
    lines += [f"  runner-up {o.decode} prefills locally, score {o.score:.3f}" if o.local_prefill
              else f"  runner-up {o.prefill} → {o.decode}, score {o.score:.3f}"
              for o in result.runners_up]
    return "\n".join(lines + [f"  note: {note}" for note in result.notes])
