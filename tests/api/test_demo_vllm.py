"""The README's second demo through its entry point: ``toposched demo --engines vllm``
on two real CPU vLLM engines behind the gateway. The KV must really move (the decode
engine's NIXL byte counter grows by the prompt's KV blocks), and every process the demo
started must be gone when it ends, whether it finished or was interrupted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.engines.vllm_harness import EngineFleet, vllm_python

pytestmark = [pytest.mark.engine, pytest.mark.process]
ROOT = Path(__file__).parents[2]


def _command() -> list[str]:
    return [sys.executable, "-m", "api.cli.main", "demo", "--engines", "vllm", "--json"]


def _environment(mark: str) -> dict[str, str]:
    """The demo's environment: the vLLM interpreter and a marker every process it starts
    inherits (to find strays). TMPDIR stays: vLLM's IPC socket paths live under it, and a
    pytest directory makes them longer than a Unix socket path may be."""
    return {**os.environ, "TOPOSCHED_VLLM_PYTHON": str(vllm_python()),
            "TOPOSCHED_TEST_MARK": mark}


def _marked(mark: str) -> list[int]:
    """Processes whose environment carries ``mark`` (the demo's descendants)."""
    needle = f"TOPOSCHED_TEST_MARK={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_gone(mark: str, timeout_s: float = 30.0) -> list[int]:
    """The marked processes still there after ``timeout_s`` (orphans reaped by init)."""
    deadline = time.monotonic() + timeout_s
    while (left := _marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _check_kv_moved(request: dict[str, Any], block_bytes: int, block_tokens: int) -> None:
    assert request["status"] == 200, request
    assert request["mode"] == "disaggregated", request
    assert (request["prefill"], request["decode"]) == ("vllm-prefill", "vllm-decode")
    assert request["tier"] == "nvlink"
    moved, tokens = request["nixl_bytes"], request["prompt_tokens"]
    # whole KV blocks of the prompt: the full ones, and the partial last one if any
    assert moved % block_bytes == 0, request
    assert tokens // block_tokens <= moved // block_bytes <= -(-tokens // block_tokens), request
    assert request["nixl_transfers"] >= 1 and request["nixl_ms"] > 0
    for phase in ("prefill_ms", "handoff_ms", "decode_ttft_ms"):
        assert request[phase] is not None and request[phase] >= 0, (phase, request)


@pytest.mark.timeout(900)
def test_vllm_demo_moves_the_kv_with_nixl_and_leaves_nothing_running(
        vllm_fleet: EngineFleet) -> None:
    vllm_fleet.lock.acquire()  # one run of real engines on the machine at a time
    mark = uuid.uuid4().hex
    done = subprocess.run(_command(), capture_output=True, text=True, cwd=ROOT, timeout=840,
                          env=_environment(mark), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    block_tokens = report["block_tokens"]
    block_bytes = block_tokens * report["kv_bytes_per_token"]
    completion, chat, again = report["requests"]
    _check_kv_moved(completion, block_bytes, block_tokens)
    _check_kv_moved(chat, block_bytes, block_tokens)
    # the same prompt again: whatever the route, an answer (nothing left hanging)
    assert again["status"] == 200, again
    assert report["ui"].endswith("/ui")
    assert {p["name"] for p in report["processes"]} == {"vllm-prefill", "vllm-decode",
                                                         "gateway"}
    assert not _wait_gone(mark), "processes of the demo still running"
    for process in report["processes"]:
        assert all(_port_free(port) for port in process["ports"]), process


@pytest.mark.timeout(600)
def test_vllm_demo_interrupted_while_engines_start_stops_them(
        vllm_fleet: EngineFleet) -> None:
    vllm_fleet.lock.acquire()
    mark = uuid.uuid4().hex
    # as a terminal's Ctrl-C finds it: SIGINT at its default (a shell's background job
    # would inherit it ignored, and Python then leaves it ignored)
    demo = subprocess.Popen(_command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=_environment(mark),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert demo.stderr is not None
        for line in demo.stderr:
            if "starting 2 vLLM engines" in line:
                break
        deadline = time.monotonic() + 120
        while len(_marked(mark)) < 3 and time.monotonic() < deadline:  # demo + 2 engines
            time.sleep(0.2)
        assert len(_marked(mark)) >= 3, "the engines did not start"
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=120) == 130
        assert "interrupted" in demo.stderr.read()
    finally:
        if demo.poll() is None:  # the test failed: leave nothing behind either
            demo.kill()
            demo.wait()
            _kill(_marked(mark))
    assert not _wait_gone(mark), "engines of the interrupted demo still running"


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
