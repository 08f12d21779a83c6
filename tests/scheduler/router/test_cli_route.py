"""``toposched route`` as a user runs it: JSON contract and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.cli.main import run
from tests.scheduler.router.builders import CROSS_ZONE, SAME_RAIL, SOURCE
from tests.topology.builders import small_fabric


@pytest.fixture(scope="module")
def fabric_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fabric") / "fabric.json"
    small_fabric().save(path)
    return path


def _state(tmp_path: Path, **overrides: Any) -> Path:
    state: dict[str, Any] = {
        "version": 1, "model": "llama-3-70b", "block_tokens": 16,
        "workers": [
            {"id": "prefill-0", "role": "prefill", "gpus": [SOURCE], "free_kv_blocks": 500,
             "cached_blocks": [101, 102, 103, 104]},
            {"id": "decode-near", "role": "decode", "gpus": [SAME_RAIL], "free_kv_blocks": 500},
            {"id": "decode-far", "role": "decode", "gpus": [CROSS_ZONE], "free_kv_blocks": 500,
             "cached_blocks": [101, 102]},
        ],
    }
    state.update(overrides)
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump(state))
    return path


def _route(fabric: Path, state: Path, request: str, *extra: str) -> list[str]:
    return ["route", "--fabric", str(fabric), "--state", str(state), "--request", request,
            "--json", *extra]


def test_route_prints_the_decision(fabric_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    request = json.dumps({"request_id": "r-1", "block_hashes": [101, 102, 103, 104]})
    assert run(_route(fabric_file, _state(tmp_path), request)) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "scheduled" and result["policy"] == "fabric-cost"
    assert result["prefill"]["worker"] == "prefill-0"
    assert {"transfer", "estimate", "runners_up", "notes", "considered"} <= set(result)
    # 64 tokens: moving 20 MB one leaf away (0.4 ms) beats prefilling 32 tokens on the far
    # decode worker (1.6 ms) or 64 on the near one (3.2 ms).
    assert result["decode"]["worker"] == "decode-near" and result["mode"] == "disaggregated"
    assert result["transfer"]["block_hashes"] == [101, 102, 103, 104]
    assert result["transfer"]["tier"] == "same_leaf"


def test_route_reads_request_files_and_placement(fabric_file: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"block_hashes": [101]}))
    placement = tmp_path / "placement.yaml"
    placement.write_text(yaml.safe_dump({"version": 1, "fabric": "small", "pairings": [
        {"prefill": "prefill-0", "decode": "decode-near", "weight": 1.0,
         "tier": "same_leaf"}]}))  # the shape of scheduler.placement.result.Placement
    argv = _route(fabric_file, _state(tmp_path), f"@{request}", "--placement", str(placement),
                  "--policy", "least-loaded")
    assert run(argv) == 0
    assert json.loads(capsys.readouterr().out)["policy"] == "least-loaded"


def test_unschedulable_exits_3_with_reasons(fabric_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    request = json.dumps({"block_hashes": [1, 2], "decode_worker": "nobody"})
    assert run(_route(fabric_file, _state(tmp_path), request)) == 3
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "unschedulable" and "nobody" in result["reasons"][0]


def test_bad_request_exits_2(fabric_file: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run(_route(fabric_file, _state(tmp_path), "{not json")) == 2
    assert "--request" in capsys.readouterr().err
    assert run(_route(fabric_file, _state(tmp_path), '{"block_hashes": [-5]}')) == 2
    assert "block_hashes" in capsys.readouterr().err


def test_bad_state_names_every_problem(fabric_file: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    workers = [{"id": "a", "role": "prefill", "gpus": ["no-such/gpu0"], "free_kv_blocks": 1},
               {"id": "a", "role": "decode", "gpus": [SAME_RAIL], "free_kv_blocks": 1}]
    pairs = [{"prefill": "a", "decode": "ghost"}]
    state = _state(tmp_path, workers=workers, preferred_pairs=pairs)
    assert run(_route(fabric_file, state, '{"block_hashes": [1]}')) == 2
    err = capsys.readouterr().err
    assert "workers[0].gpus[0]" in err and "workers[1].id" in err
    assert "preferred_pairs[0]" in err and "'ghost'" in err


def test_text_output(fabric_file: Path, tmp_path: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = _route(fabric_file, _state(tmp_path), '{"block_hashes": [101, 102]}')[:-1]
    assert run(argv) == 0
    assert "ttft" in capsys.readouterr().out
