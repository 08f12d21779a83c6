"""The real-vLLM harness itself: NIXL progress thread off, pinning, a working P/D handoff."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.engines.vllm_fixtures import VllmPair
from tests.engines.vllm_harness import (
    BLOCK_SIZE,
    MODEL_NAME,
    VllmEngine,
    process_tree,
    site_dir,
    vllm_python,
)

PROBE = "from nixl._api import nixl_agent_config; print(nixl_agent_config().enable_pthread)"


def _probe(env: dict[str, str]) -> str:
    done = subprocess.run([str(vllm_python()), "-c", PROBE], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.engine  # runs the vLLM environment's Python (.venv-vllm)
def test_sitecustomize_turns_the_nixl_progress_thread_off(tmp_path: Path) -> None:
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert _probe(plain) == "True"  # NIXL's own default: a busy-polling thread
    assert _probe({**plain, "PYTHONPATH": str(site_dir(tmp_path))}) == "False"


def _affinities(engine: VllmEngine) -> set[frozenset[int]]:
    found = set()
    for pid in process_tree(engine.process.pid):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                found.add(frozenset(os.sched_getaffinity(int(tid))))
            except OSError:
                continue  # the thread ended meanwhile
    return found


@pytest.mark.engine
@pytest.mark.process
@pytest.mark.timeout(900)
def test_pair_threads_are_pinned_to_one_core_each(vllm_pair: VllmPair) -> None:
    for engine in (vllm_pair.prefill, vllm_pair.decode):
        assert _affinities(engine) == {frozenset({engine.cpu})}
    if len(os.sched_getaffinity(0)) > 1:
        assert vllm_pair.prefill.cpu != vllm_pair.decode.cpu


def _nixl_bytes(engine: VllmEngine) -> float:
    for line in engine.get("/metrics").text.splitlines():
        if line.startswith("vllm:nixl_bytes_transferred_sum"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.engine
@pytest.mark.process
@pytest.mark.timeout(900)
def test_pair_hands_kv_over_with_nixl(vllm_pair: VllmPair) -> None:
    prompt = list(range(1, 4 * BLOCK_SIZE + 1))
    before = _nixl_bytes(vllm_pair.decode)
    first = vllm_pair.prefill.post("/v1/completions", {
        "model": MODEL_NAME, "prompt": prompt, "max_tokens": 1, "temperature": 0,
        "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False,
                               "remote_engine_id": None, "remote_block_ids": None,
                               "remote_host": None, "remote_port": None}})
    assert first.status_code == 200, first.text
    params = first.json()["kv_transfer_params"]
    assert params["do_remote_prefill"] is True
    second = vllm_pair.decode.post("/v1/completions", {
        "model": MODEL_NAME, "prompt": prompt, "max_tokens": 4, "temperature": 0,
        "kv_transfer_params": params})
    assert second.status_code == 200, second.text
    assert _nixl_bytes(vllm_pair.decode) > before
