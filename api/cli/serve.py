"""``toposched serve``: run the scheduler's REST service with uvicorn."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import uvicorn

from api.app import create_app
from api.security import is_loopback
from api.settings import Settings
from topology.errors import InputError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve", help="run the scheduler REST service",
        description="Serve /v1 (workers, sidecar jobs, transfers, KV events) and /healthz. "
                    "Other settings come from TOPOSCHED_* environment variables.")
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    parser.add_argument("--mode", choices=("READ", "WRITE"), default=None,
                        help="transfer mode of this deployment (default READ)")
    parser.add_argument("--fabric", default=None, help="fabric.json to serve (tiers, NICs)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="share state with other replicas through this Redis")
    parser.add_argument("--log-level", default="warning",
                        choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(handler=handle_serve)


def handle_serve(args: argparse.Namespace) -> int:
    """Build settings (env + flags), create the app and run it until interrupted."""
    return run_service(args, transfer_mode=args.mode)


def run_service(args: argparse.Namespace, **extra: Any) -> int:
    """Build settings (env, then the common flags and ``extra``), create the app and
    run it until interrupted."""
    given = {"host": args.host, "port": args.port, "fabric": args.fabric,
             "redis_url": args.redis, **extra}
    settings = Settings(**{key: value for key, value in given.items() if value is not None})
    if not (settings.worker_token or settings.operator_token):
        if not is_loopback(settings.host):
            raise InputError(f"refusing to bind {settings.host} without authentication: set "
                             "TOPOSCHED_OPERATOR_TOKEN and TOPOSCHED_WORKER_TOKEN")
        print(f"toposched: no tokens configured: authentication is off, serving on "
              f"{settings.host} only", file=sys.stderr)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=args.log_level, access_log=False,
                # long-polls would otherwise hold a graceful shutdown for their full wait
                timeout_graceful_shutdown=2)
    return 0
