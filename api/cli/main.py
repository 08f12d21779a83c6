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

#: Command modules under ``api.cli`` (each has ``register(subparsers)``) and their help.
#: Only the chosen command's module is imported: some commands load native libraries
#: that cannot share one process (OR-Tools for ``place``, NIXL for ``sidecar``: their
#: bundled abseil builds clash), and start-up stays fast.
COMMANDS = {
    "topo": "fabric topology: parse, build, query, draw, collect, synthesise",
    "demo": "run the demo on the embedded example cluster",
    "kv": "KV-cache size of a model for a number of tokens",
    "place": "place prefill/decode instances on a fabric (CP-SAT)",
    "route": "route one request to a (prefill, decode) pair",
    "serve": "run the scheduler's REST API",
    "gateway": "serve OpenAI endpoints in front of P/D engine pairs (and the REST API)",
    "sidecar": "run a KV-transfer sidecar (NIXL agent) next to an engine",
    "simulate": "replay a trace on a simulated cluster and compare policies",
}

Handler = Callable[[argparse.Namespace], int]


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first positional argument: the command whose module must be loaded."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``command`` (or every command when None) is fully registered."""
    parser = argparse.ArgumentParser(
        prog="toposched",
        description="Topology-aware scheduler for disaggregated LLM inference.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(f"api.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command and return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    parser = build_parser(command if command in COMMANDS else "")
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
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"toposched: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("toposched: interrupted", file=sys.stderr)
        return 130
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
