"""Command line of the sidecar process (``python -m sidecar`` / ``toposched sidecar``).

``toposched sidecar`` re-executes itself as ``python -m sidecar`` so the sidecar process
holds nothing but what it needs: OR-Tools and NIXL crash when both are loaded into one
process (their bundled abseil builds clash at import, either order), and a CLI process
may have loaded more than one command's libraries (tests, ``build_parser()``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar.config import TOKEN_ENV, SidecarConfig, cpus_besides
from topology.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sidecar's flags."""
    p.add_argument("--scheduler", required=True, metavar="URL", help="scheduler base URL")
    p.add_argument("--name", required=True, help="worker name (also the NIXL agent name)")
    p.add_argument("--kv-blocks", type=int, default=0, metavar="N",
                   help="KV pool blocks (required unless the sidecar only announces)")
    p.add_argument("--block-bytes", type=int, default=0, metavar="B",
                   help="bytes of one whole KV block (all layers)")
    p.add_argument("--engine-instance", type=Path, default=None, metavar="FILE",
                   help="instance document of the engine next to this sidecar: announced to "
                        "the scheduler (docs/engines.md); alone, the sidecar only announces")
    p.add_argument("--announce-every", type=float, default=5.0, metavar="S",
                   help="seconds between announcements")
    p.add_argument("--mem", choices=("dram", "vram"), default="dram",
                   help="host memory, or CUDA memory (needs torch with CUDA)")
    p.add_argument("--device-id", type=int, default=0)
    p.add_argument("--layout", choices=("block_major", "per_layer"), default="block_major")
    p.add_argument("--regions", type=int, default=1,
                   help="per_layer: number of regions (layers × 2 for K and V)")
    p.add_argument("--role", choices=("prefill", "decode", "both"), default="both")
    p.add_argument("--model", default=None)
    p.add_argument("--host", default=socket.gethostname(), help="host name for tiering")
    p.add_argument("--gpu", action="append", default=[], metavar="HOST/gpuN",
                   help="fabric GPU of this worker (repeatable)")
    p.add_argument("--poll-wait", type=float, default=5.0, metavar="S",
                   help="seconds between the job stream's keep-alive lines (a silent stream "
                        "is reopened after this plus the client timeout)")
    p.add_argument("--executors", type=int, default=4,
                   help="threads for WRITE targets waiting for a NIXL notification")
    p.add_argument("--progress-thread", action="store_true",
                   help="enable NIXL's progress thread (busy-spins a core)")
    p.add_argument("--ucx-devices", default=None, metavar="DEV",
                   help="pin UCX to these devices, e.g. mlx5_0:1")
    p.add_argument("--verify", choices=("full", "moved", "off"), default="full",
                   help="fake engine: check received bytes (moved blocks and every block "
                        "still held from earlier transfers / moved only / off)")
    p.add_argument("--state-file", type=Path, default=None,
                   help="write the sidecar's state (serving / final) as JSON here")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--drain-timeout", type=float, default=15.0, metavar="S")
    p.add_argument("--post-wait", type=float, default=0.05, metavar="S",
                   help="seconds the job thread drives a transfer it posted itself before "
                        "handing the rest to the inflight thread and reading the next job "
                        "(0: hand off at once)")
    p.add_argument("--max-inflight", type=_positive, default=2, metavar="N",
                   help="initiator transfers posted and not yet reported at once: the job "
                        "thread posts the next job's request while earlier ones complete "
                        "and are reported on the inflight thread (1: one at a time)")
    p.add_argument("--copy-cpu", type=int, default=None, metavar="CPU",
                   help="run the job thread (it posts every transfer and, where the copy "
                        "runs on the CPU, copies) on this CPU alone and the sidecar's "
                        "other threads on the rest of its CPUs; for hosts where the copy "
                        "uses the CPU (host-memory KV): nothing else of the sidecar then "
                        "preempts the copy (docs/transfers.md)")
    p.add_argument("--block-tokens", type=int, default=None, metavar="N",
                   help="the engine's KV block size in tokens, registered with the worker "
                        "(the scheduler hashes this model's prompts into such blocks)")
    p.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                   help=f"read the scheduler's worker token from FILE (else ${TOKEN_ENV})")
    p.add_argument("--token", default=None,
                   help="the token itself; a command line is visible to every user of the "
                        f"host (ps): prefer ${TOKEN_ENV} or --token-file")
    p.add_argument("--fake-decode-ms", type=float, default=1000.0, metavar="MS",
                   help="fake engine: a received request decodes this long, then ends and "
                        "its KV blocks are released at the scheduler (negative: never)")
    p.add_argument("--debug-hold", type=float, default=0.0, metavar="S",
                   help=argparse.SUPPRESS)


def _positive(text: str) -> int:
    """An integer of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    """Settings from parsed flags."""
    return SidecarConfig(
        scheduler=args.scheduler, name=args.name, kv_blocks=args.kv_blocks,
        block_bytes=args.block_bytes, mem=args.mem, device_id=args.device_id,
        layout=args.layout, regions=args.regions, role=args.role, model=args.model,
        host=args.host, gpus=tuple(args.gpu), poll_wait_s=args.poll_wait,
        executors=args.executors, progress_thread=args.progress_thread,
        ucx_devices=args.ucx_devices, verify=args.verify, state_file=args.state_file,
        connect_timeout_s=args.connect_timeout, drain_timeout_s=args.drain_timeout,
        post_wait_s=args.post_wait, max_inflight=args.max_inflight,
        fake_decode_ms=args.fake_decode_ms,
        debug_hold_s=args.debug_hold,
        block_tokens=args.block_tokens, token=read_token(args.token, args.token_file),
        engine_instance=args.engine_instance, announce_every_s=args.announce_every,
        copy_cpu=_copy_cpu(args.copy_cpu))


def _copy_cpu(cpu: int | None) -> int | None:
    """``--copy-cpu``, checked against the CPUs this process may use."""
    if cpu is not None:
        try:
            cpus_besides(cpu)
        except ValueError as exc:
            raise InputError(f"--copy-cpu {cpu}: {exc}") from None
    return cpu


def read_token(flag: str | None, path: Path | None) -> str | None:
    """The scheduler token: ``--token``, else the first line of ``--token-file``, else
    ``$TOPOSCHED_WORKER_TOKEN`` (None: the scheduler runs without authentication)."""
    if flag:
        return flag
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InputError(f"--token-file {path}: {exc.strerror or exc}") from exc
        if not token:
            raise InputError(f"--token-file {path}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and run the sidecar until SIGTERM; returns the exit code."""
    parser = argparse.ArgumentParser(prog="toposched sidecar",
                                     description="KV-transfer sidecar (NIXL agent).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sidecar").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from topology.errors import ToposchedError
    try:
        config = config_from_args(args)
        if config.kv_blocks <= 0 or config.block_bytes <= 0:
            if config.engine_instance is None:
                parser.error("--kv-blocks and --block-bytes are required (positive) unless "
                             "--engine-instance makes the sidecar only announce")
            return announce_only(config)
        from sidecar.runner import run_sidecar  # loads NIXL: only in the sidecar process
        return run_sidecar(config)
    except ToposchedError as exc:
        print(f"toposched sidecar: {exc.title}: {exc}", file=sys.stderr)
        return 2


def announce_only(config: SidecarConfig) -> int:
    """Announce the engine instance(s) until SIGTERM (no NIXL pool)."""
    import signal

    from sidecar.announce import Announcer, load_announcement

    assert config.engine_instance is not None
    announcer = Announcer(config.scheduler, load_announcement(config.engine_instance),
                          config.announce_every_s)
    announcer.announce()  # a refusal is reported now, not retried for ever
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: announcer.stop.set())
    announcer.run()
    return 0
