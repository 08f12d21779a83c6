"""The sidecar announces the engine next to it to a real ``toposched serve`` (tokens on)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.engines.fake_engine import FakeEngine
from tests.servers import free_port
from tests.sidecar.harness import Proc, _cli, _spawn, wait_for

pytestmark = pytest.mark.process
TOKENS = {"TOPOSCHED_WORKER_TOKEN": "w-secret", "TOPOSCHED_OPERATOR_TOKEN": "o-secret"}


def test_sidecar_announces_its_engine_and_the_scheduler_follows_it(tmp_path: Path) -> None:
    engine = FakeEngine("h9/decode-0")
    document = {"version": 1, "instances": [
        engine.instance(role="decode").model_dump(mode="json", exclude_none=True)]}
    del document["instances"][0]["gpus"]  # taken from CUDA_VISIBLE_DEVICES
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(document))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = Proc(_spawn(_cli("serve", "--port", str(port)), tmp_path / "serve.log",
                        {**TOKENS, "TOPOSCHED_ENGINE_SCRAPE_INTERVAL_S": "0.1"}),
                 tmp_path / "serve.log")
    headers = {"Authorization": "Bearer w-secret"}
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz").status_code == 200, 30, "serve")
        sidecar = Proc(_spawn(_cli("sidecar", "--scheduler", base, "--name", "h9/decode-0",
                                   "--engine-instance", str(path), "--announce-every", "0.5"),
                              tmp_path / "sidecar.log",
                              {**TOKENS, "CUDA_VISIBLE_DEVICES": "2,3"}),
                       tmp_path / "sidecar.log")
        view = wait_for(lambda: _view(base, headers), 30, "the announced instance up")
        assert view["source"] == "sidecar" and view["instance"]["gpus"] == [2, 3]
        assert sidecar.stop(signal.SIGTERM) == 0
    finally:
        serve.stop()
        engine.kill()


def _view(base: str, headers: dict[str, str]) -> dict[str, object] | None:
    answer = httpx.get(f"{base}/v1/instances", headers=headers)
    views = answer.json()["instances"] if answer.status_code == 200 else []
    up = [v for v in views if v["status"] and v["status"]["state"] == "up"]
    return up[0] if up else None


def test_a_bad_instance_document_stops_the_sidecar_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "engine.yaml"
    path.write_text("version: 1\ninstances:\n  - {name: x, engine: vllm}\n")
    done = subprocess.run([sys.executable, "-m", "api.cli.main", "sidecar", "--scheduler",
                           "http://127.0.0.1:9", "--name", "x", "--engine-instance", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "instances[0].role" in done.stderr and "Traceback" not in done.stderr
