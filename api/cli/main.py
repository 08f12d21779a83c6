"""Entry point of the ``toposched`` command.

Each command group lives in its own module with a ``register(subparsers)`` function;
handlers return an exit code. Errors from the toposched tree are printed as one
readable line (exit 2 for bad input or unknown names, 1 otherwise), never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from topology.errors import InputError, NotFoundError, ToposchedError

#: Command-group modules under ``api.cli``; each has ``register(subparsers)``.
COMMAND_MODULES = ("topo", "demo", "kv", "route", "place")

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every registered command group."""
    parser = argparse.ArgumentParser(
        prog="toposched",
        description="Topology-aware scheduler for disaggregated LLM inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"api.cli.{name}")
        module.register(subparsers)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except (InputError, NotFoundError) as exc:
        print(f"toposched: error: {exc}", file=sys.stderr)
        return 2
    except ToposchedError as exc:
        print(f"toposched: {exc.title}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"toposched: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("toposched: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the last line of defence: no traceback for users
        if os.environ.get("TOPOSCHED_DEBUG"):
            raise
        print(f"toposched: internal error: {type(exc).__name__}: {exc} "
              "(set TOPOSCHED_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
