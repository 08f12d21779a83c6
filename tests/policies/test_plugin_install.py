"""docs/example-plugin really installed (pip, offline, into a scratch target) and used by
``toposched route``, ``toposched serve`` and ``toposched simulate`` in their own
processes, through the entry-point group and its allowlist."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.api.service_builders import worker_json
from tests.servers import free_port
from tests.sidecar.harness import AUTH, ROOT, SERVER_TOKENS, START_TIMEOUT_S, Proc, wait_for
from tests.topology.builders import small_fabric

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]
EXAMPLE = ROOT / "docs" / "example-plugin"
#: A policy whose only scorer is the plugin's: each side goes to the freest KV cache.
POLICY = {
    "version": 1, "name": "free-kv", "handler": "two-stage-handler",
    "plugins": [{"type": "two-stage-handler"}, {"type": "free-kv-scorer"},
                {"type": "max-score-picker"}],
    "profiles": [{"name": side, "plugins": [{"ref": "free-kv-scorer", "weight": 1},
                                            {"ref": "max-score-picker"}]}
                 for side in ("prefill", "decode")]}
GPUS = ("z0-p0-r0-h00/gpu0", "z0-p0-r0-h01/gpu0", "z0-p0-r1-h00/gpu0")


@dataclass(frozen=True)
class Installed:
    """The scratch install and the files the commands read."""

    env: dict[str, str]
    policy: Path
    fabric: Path
    state: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, work / "example-plugin")  # the build writes next to it
    target = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target),
                    str(source)], check=True, cwd=work)
    assert (target / "toposched_free_kv").is_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]),
           "PYTHONUNBUFFERED": "1"}
    env.pop("TOPOSCHED_PLUGINS", None)
    policy, fabric, state = work / "free-kv.yaml", work / "fabric.json", work / "state.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    small_fabric().save(fabric)
    state.write_text(yaml.safe_dump({"version": 1, "kv_bytes_per_token": 1024, "workers": [
        {"id": "prefill-0", "role": "prefill", "gpus": [GPUS[0]], "free_kv_blocks": 10,
         "capacity_kv_blocks": 100},
        {"id": "decode-tight", "role": "decode", "gpus": [GPUS[1]], "free_kv_blocks": 20,
         "capacity_kv_blocks": 100},
        {"id": "decode-roomy", "role": "decode", "gpus": [GPUS[2]], "free_kv_blocks": 90,
         "capacity_kv_blocks": 100}]}))
    return Installed(env, policy, fabric, state)


def _toposched(installed: Installed, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.cli.main", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**installed.env, **env}, timeout=120)


def test_route_uses_the_installed_plugin(installed: Installed) -> None:
    done = _toposched(installed, "route", "--fabric", str(installed.fabric), "--state",
                      str(installed.state), "--request", '{"block_hashes": [1, 2]}',
                      "--policy", str(installed.policy), "--json")
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["policy"] == "free-kv"
    assert decision["decode"]["worker"] == "decode-roomy"  # 90 % free beats 20 %


def test_the_allowlist_keeps_a_plugin_out(installed: Installed) -> None:
    for allow in ("", "some-other-plugin"):
        done = _toposched(installed, "route", "--fabric", str(installed.fabric), "--state",
                          str(installed.state), "--request", '{"block_hashes": [1]}',
                          "--policy", str(installed.policy), TOPOSCHED_PLUGINS=allow)
        assert done.returncode == 2
        assert "unknown plugin type 'free-kv-scorer'" in done.stderr
        assert "Traceback" not in done.stderr
    allowed = _toposched(installed, "route", "--fabric", str(installed.fabric), "--state",
                         str(installed.state), "--request", '{"block_hashes": [1]}',
                         "--policy", str(installed.policy), TOPOSCHED_PLUGINS="free-kv")
    assert allowed.returncode == 0, allowed.stderr


@pytest.fixture
def served(installed: Installed, tmp_path: Path) -> Iterator[str]:
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "api.cli.main", "serve", "--port", str(port), "--fabric",
             str(installed.fabric), "--policy", str(installed.policy)], cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT, env={**installed.env, **SERVER_TOKENS})
    proc, url = Proc(popen, log), f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(proc, url), START_TIMEOUT_S, "the scheduler")
        yield url
    finally:
        proc.stop(signal.SIGTERM, 10)


def _up(proc: Proc, url: str) -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"serve exited {proc.popen.returncode}:\n{proc.text()}")
    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200


def test_serve_routes_with_the_installed_plugin(served: str) -> None:
    for name, role, gpu, blocks in (("prefill-0", "prefill", GPUS[0], 64),
                                    ("decode-tight", "decode", GPUS[1], 16),
                                    ("decode-roomy", "decode", GPUS[2], 256)):
        answer = httpx.post(f"{served}/v1/workers", headers=AUTH, timeout=10,
                            json=worker_json(name, role, [gpu], num_blocks=blocks))
        assert answer.status_code == 201, answer.text
    answer = httpx.post(f"{served}/v1/route", headers=AUTH, timeout=10,
                        json={"block_hashes": [7, 8], "model": "llama-3-70b"})
    assert answer.status_code == 200, answer.text
    decision = answer.json()["decision"]
    assert decision["policy"] == "free-kv"
    assert decision["decode"]["worker"] == "decode-roomy"


def test_simulate_runs_the_installed_plugin(installed: Installed, tmp_path: Path) -> None:
    done = _toposched(installed, "simulate", "--cluster", "small", "--workload",
                      "agentic:sessions=2", "--policies", str(installed.policy),
                      "--placement", "greedy", "--json", "--no-plots", "-o", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert run["policy"] == str(installed.policy)
    assert run["summary"]["completed"] > 0
