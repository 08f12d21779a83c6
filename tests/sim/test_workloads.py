"""Trace readers and the agentic generator."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.scenarios import workload
from sim.workloads import (
    AgenticParams,
    agentic,
    ideal_hit_ratio,
    load_azure,
    load_mooncake,
    spread_quantised,
    without_sharing,
)
from tests.sim.builders import FIXTURES
from topology.errors import InputError, NotFoundError, ParseError


def test_mooncake_fixture_reads_every_row_with_blocks_and_spread_times() -> None:
    trace = load_mooncake(FIXTURES / "mooncake_small.jsonl")
    assert len(trace.requests) == 24
    assert trace.block_tokens == 512
    for r in trace.requests:
        assert len(r.block_hashes) == math.ceil(r.prompt_tokens / 512)
    times = [r.arrival_s for r in trace.requests]
    assert times == sorted(times)
    assert len(set(times)) == 24  # 6 per bucket in the file, spread apart
    assert 0.25 < ideal_hit_ratio(trace) < 0.5


def test_mooncake_spreading_is_seeded() -> None:
    a = load_mooncake(FIXTURES / "mooncake_small.jsonl", seed=3)
    b = load_mooncake(FIXTURES / "mooncake_small.jsonl", seed=3)
    c = load_mooncake(FIXTURES / "mooncake_small.jsonl", seed=4)
    assert a == b
    assert a != c


@given(st.lists(st.sampled_from([0.0, 3.0, 6.0, 9.0]), min_size=8, max_size=60),
       st.integers(0, 10))
@settings(max_examples=50, deadline=None)
def test_spread_keeps_each_request_inside_its_bucket(times: list[float], seed: int) -> None:
    spread = spread_quantised(times, seed)
    distinct = sorted(set(times))
    if len(distinct) < 2 or len(distinct) >= len(times) / 2:
        assert spread == times
        return
    gaps = sorted(b - a for a, b in itertools.pairwise(distinct))
    width = gaps[len(gaps) // 2]  # the documented bucket width: the median gap
    for original, moved in zip(times, spread, strict=True):
        assert original <= moved < original + width + 1e-9


def test_mooncake_bad_line_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [0]}\n'
                    '{"timestamp": 5, "input_length": 10, "output_length": 2, "hash_ids": "x"}\n')
    with pytest.raises(ParseError) as err:
        load_mooncake(path)
    assert f"{path}:2 at hash_ids" in str(err.value)
    path.write_text("not json\n")
    with pytest.raises(ParseError, match=":1"):
        load_mooncake(path)


def test_azure_fixture_has_no_shared_blocks() -> None:
    trace = load_azure(FIXTURES / "azure_small.csv")
    assert len(trace.requests) == 12
    assert not trace.has_prefix
    assert ideal_hit_ratio(trace) == 0.0
    assert trace.requests[0].arrival_s == 0.0
    assert 10.0 < trace.duration_s < 12.0


def test_azure_wrong_header_is_a_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ParseError, match="TIMESTAMP,ContextTokens,GeneratedTokens"):
        load_azure(path)


def test_agentic_is_deterministic_and_shares_system_prompts() -> None:
    params = AgenticParams(sessions=20)
    a, b = agentic(params, seed=1), agentic(params, seed=1)
    assert a == b
    assert agentic(params, seed=2) != a
    assert len(a.requests) == 20 * params.turns
    for r in a.requests:
        assert len(r.block_hashes) == math.ceil(r.prompt_tokens / 512)
        assert len(set(r.block_hashes)) == len(r.block_hashes)
    assert ideal_hit_ratio(a) > 0.6
    assert ideal_hit_ratio(without_sharing(a)) == 0.0


def test_agentic_rejects_system_prompt_off_block_boundary() -> None:
    with pytest.raises(InputError):
        AgenticParams(system_tokens=1000)


def test_workload_specs_scale_limit_and_reject_bad_options() -> None:
    trace = workload("agentic:sessions=5,scale=2")
    base = workload("agentic:sessions=5")
    assert trace.requests[-1].arrival_s == pytest.approx(base.requests[-1].arrival_s / 2)
    assert len(workload("agentic:sessions=5,limit=7").requests) == 7
    with pytest.raises(InputError):
        workload("agentic:speed=2")
    with pytest.raises(InputError):
        workload("agentic:scale=-1")
    with pytest.raises(NotFoundError):
        workload("nope")
