"""``toposched demo --engines vllm``: the disaggregated flow on two real CPU vLLM engines
behind ``toposched gateway``, the KV handed over by vLLM's NixlConnector."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console
from rich.markup import escape

from api.cli.output import print_json
from api.demo.vllm_run import DemoRequest, RequestResult, demo_requests, run_request
from api.demo.vllm_stack import HOST, VllmStack
from engines.launch import KV_BYTES_PER_TOKEN, vllm_python
from topology.spec import FabricSpec


def run_vllm_demo(spec: FabricSpec, args: argparse.Namespace) -> int:
    """Start the engines and the gateway, send the demo's requests, report, stop all.
    The work directory (model, logs) is removed afterwards, unless something failed:
    then its logs are kept and their place printed."""
    vllm_python()  # a missing vLLM environment fails here, saying how to create it
    console = Console(stderr=args.json)
    stack = VllmStack(Path(tempfile.mkdtemp(prefix="toposched-demo-vllm-")))
    keep = True
    with _sigterm_interrupts():
        try:
            _run(stack, spec, console, args)
            keep = False
        except KeyboardInterrupt:
            keep = False
            raise
        finally:
            console.print("stopping the gateway and the engines …")
            stack.stop()
            if keep:
                console.print(f"logs kept in {stack.workdir}")
            else:
                shutil.rmtree(stack.workdir, ignore_errors=True)
    return 0


def _run(stack: VllmStack, spec: FabricSpec, console: Console,
         args: argparse.Namespace) -> None:
    spec.save(stack.workdir / "fabric.json")
    stack.start(stack.workdir / "fabric.json", console.print)
    console.print(f"gateway: {stack.url}/v1   live view: {stack.url}/ui")
    with httpx.Client() as client:
        results = [_one(stack, client, request, console, args.json)
                   for request in demo_requests()]
    _report(console, stack, results, args.json)
    if args.keep_running:
        console.print("running until Ctrl-C …")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def _one(stack: VllmStack, client: httpx.Client, request: DemoRequest, console: Console,
         quiet: bool) -> RequestResult:
    result = run_request(stack, client, request)
    if not quiet:
        console.print(*_lines(result, stack.decode.options.block_size), sep="\n")
    return result


def _lines(r: RequestResult, block_tokens: int) -> list[str]:
    """What one request did, in three lines."""
    pair = f"{r.prefill} → {r.decode}" if r.prefill != "-" else r.decode
    block_bytes = block_tokens * KV_BYTES_PER_TOKEN
    moved = (f"KV read by the decode engine with NIXL: {r.nixl_bytes:,} bytes = "
             f"{r.nixl_bytes / block_bytes:g} blocks of {block_tokens} tokens in "
             f"{_ms(r.nixl_ms)} ms (the prompt's KV: {r.prompt_kv_bytes:,} bytes)"
             if r.nixl_bytes else "no KV moved (vllm:nixl_bytes_transferred unchanged)")
    return [f"[bold]{r.label}[/bold] ({r.prompt_tokens} prompt tokens): HTTP {r.status}, "
            f"{r.mode}, {pair}, tier {r.tier}" + ("" if r.mode == "disaggregated"
                                                  else f" — {escape(r.reason)}"),
            f"    prefill leg {_ms(r.prefill_ms)} ms, handoff {_ms(r.handoff_ms)} ms, "
            f"decode to first byte {_ms(r.decode_ttft_ms)} ms, total {_ms(r.total_ms)} ms",
            f"    {moved}"]


def _report(console: Console, stack: VllmStack, results: list[RequestResult],
            as_json: bool) -> None:
    if as_json:
        print_json({"gateway": stack.url, "ui": f"{stack.url}/ui",
                    "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
                    "block_tokens": stack.decode.options.block_size, "fabric_host": HOST,
                    "processes": list(stack.processes()),
                    "requests": [r.as_json() for r in results]})
        return
    moved = [r for r in results if r.nixl_bytes > 0]
    console.print()
    console.print(f"[bold]done[/bold]: {len(results)} requests through the gateway; "
                  f"{len(moved)} had their prompt's KV read from {stack.prefill.name} by "
                  f"{stack.decode.name} with NIXL ({sum(r.nixl_bytes for r in moved):,} bytes "
                  "by the decode engine's vllm:nixl_bytes_transferred). Both engines run on "
                  f"this machine's CPUs; on the example fabric they stand for {HOST}/gpu0 "
                  "and /gpu4 (an NVLink pair), hence the tier.")
    console.print(f"live view: {stack.url}/ui   metrics: {stack.url}/metrics")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does (the engines and the gateway are stopped)."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
