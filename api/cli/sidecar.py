"""``toposched sidecar``: run the NIXL sidecar next to one serving engine.

The command re-executes as ``python -m sidecar`` (same pid, same flags) so the sidecar
process never shares an address space with OR-Tools, whatever this CLI process loaded
(see :mod:`sidecar.cli`).
"""

from __future__ import annotations

import argparse
import os
import sys

from sidecar.cli import add_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sidecar`` command."""
    parser = subparsers.add_parser(
        "sidecar", help="run a KV-transfer sidecar (NIXL agent) next to an engine",
        description="Allocate and register a KV pool with NIXL, register with the scheduler, "
                    "execute its transfer jobs and report them. Stops cleanly on SIGTERM.")
    add_arguments(parser)
    parser.set_defaults(handler=handle_sidecar)


def handle_sidecar(args: argparse.Namespace) -> int:
    """Replace this process with ``python -m sidecar`` running the same settings."""
    config = config_from_args(args)
    argv = config.to_argv() + (["--verbose"] if args.verbose else [])
    sys.stdout.flush()
    sys.stderr.flush()
    # the token goes through the environment: a command line is visible to every user
    os.execve(sys.executable, [sys.executable, "-m", "sidecar", *argv],
              {**os.environ, **config.to_env()})
    return 1  # not reached: execv only returns by raising
