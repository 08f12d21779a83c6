"""Every registered plugin honours its contract: protocol, score range, purity, determinism.

Runs against the built-ins and anything else a registry holds (the example plugin is
added here through a simulated entry point, as an installed package would be).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.contracts import (
    Filter,
    PairChoice,
    Picker,
    ProfileHandler,
    Refusal,
    ScoredWorker,
    Scorer,
)
from policies.pipeline import SchedulingProfile, WeightedScorer
from policies.registry import PluginKind, Registry, default_registry
from policies.snapshot import CycleContext, Stage
from tests.policies.entry_points import example_plugin_entry_point
from tests.scheduler.router.builders import CROSS_ZONE, SAME_RAIL, SOURCE, context, snapshot, worker

EXAMPLE = Path(__file__).parents[2] / "docs" / "example-plugin" / "src"
GPUS = (SOURCE, SAME_RAIL, CROSS_ZONE, "z0-p0-r0-h00/gpu3", "z0-p1-r0-h00/gpu0",
        "z1-p1-r1-h01/gpu7")


def _registry() -> Registry:
    registry = default_registry()
    registry.load_entry_points(entry_points=[example_plugin_entry_point()])
    return registry


@pytest.fixture(autouse=True)
def _example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))


def _types() -> list[str]:
    import sys

    sys.path.insert(0, str(EXAMPLE))
    try:
        return [t.name for t in _registry().types()]
    finally:
        sys.path.remove(str(EXAMPLE))


# A cluster state drawn by hypothesis: per worker (role, queued, running, free, cached).
_WORKER = st.tuples(st.sampled_from(["prefill", "decode", "both"]),
                    st.integers(0, 50_000), st.integers(0, 300), st.integers(0, 64),
                    st.integers(0, 8))
STATES = st.lists(_WORKER, min_size=1, max_size=len(GPUS))


def _context(state: Sequence[tuple[str, int, int, int, int]], seed: int) -> CycleContext:
    workers = [worker(f"w{i}", role, GPUS[i], queued_tokens=q, running_requests=r,
                      free_kv_blocks=free, capacity_kv_blocks=64)
               for i, (role, q, r, free, _) in enumerate(state)]
    cached = {f"w{i}": c for i, (*_, c) in enumerate(state)}
    return context(snapshot(workers), range(1, 9), cached, seed=seed, sequence=seed,
                   session="s")


def _stages(ctx: CycleContext) -> list[CycleContext]:
    return [ctx.for_stage(Stage.PREFILL), ctx.for_stage(Stage.DECODE, ctx.snapshot.workers[0])]


def _profiles(registry: Registry) -> dict[str, SchedulingProfile]:
    load, _ = registry.create("load-scorer")
    picker, _ = registry.create("max-score-picker")
    assert isinstance(load, Scorer) and isinstance(picker, Picker)
    return {name: SchedulingProfile(name, (), (WeightedScorer(load, 1.0),), picker)
            for name in ("prefill", "decode")}


def _exercise(plugin: Any, kind: PluginKind, ctx: CycleContext, registry: Registry) -> Any:
    """Call the plugin's extension point, checking its contract; return its answer."""
    candidates = list(ctx.snapshot.workers)
    before = copy.deepcopy(candidates)
    if kind is PluginKind.FILTER:
        assert isinstance(plugin, Filter)
        out: Any = plugin.filter(ctx, candidates)
        assert all(w in candidates for w in out)
        result: Any = [w.id for w in out]
        _check_fast_paths(plugin, ctx, [ctx.snapshot.position[w.id] for w in out])
    elif kind is PluginKind.SCORER:
        assert isinstance(plugin, Scorer)
        scores = plugin.score(ctx, candidates)
        assert set(scores) <= {w.id for w in candidates}
        assert all(0.0 <= v <= 1.0 for v in scores.values()), scores
        result = dict(scores)
    elif kind is PluginKind.PICKER:
        assert isinstance(plugin, Picker)
        ranked = [ScoredWorker(w, 1.0 / (i + 1)) for i, w in enumerate(candidates)]
        picked = plugin.pick(ctx, ranked)
        assert picked in ranked and plugin.pick(ctx, []) is None
        result = picked.worker.id if picked else None
    else:
        assert isinstance(plugin, ProfileHandler)
        choice = plugin.schedule(ctx, _profiles(registry))
        assert isinstance(choice, PairChoice | Refusal)
        if isinstance(choice, PairChoice):
            assert choice.prefill in candidates and choice.decode in candidates
            assert 0.0 <= choice.score <= 1.0
            assert all(0.0 <= o.score <= 1.0 for o in choice.runners_up)
        else:
            assert choice.reasons
        result = choice
    assert candidates == before, "the plugin changed its input"
    return result


def _check_fast_paths(plugin: Any, ctx: CycleContext, kept: list[int]) -> None:
    """A filter's optional fast paths (``mask`` over a position array, ``keep_few`` over
    a list of positions) keep exactly the positions ``filter`` keeps."""
    every = list(range(len(ctx.snapshot.workers)))
    mask = getattr(plugin, "mask", None)
    if mask is not None:
        assert np.flatnonzero(mask(ctx, np.array(every, dtype=np.int64))).tolist() == kept
    keep_few = getattr(plugin, "keep_few", None)
    if keep_few is not None:
        assert keep_few(ctx, every) == kept


@pytest.mark.parametrize("type_name", _types())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(state=STATES, seed=st.integers(0, 3))
def test_plugin_conformance(type_name: str, state: list[tuple[str, int, int, int, int]],
                            seed: int) -> None:
    registry = _registry()
    plugin, issues = registry.create(type_name)
    assert not issues and plugin is not None
    assert plugin.name == type_name  # type: ignore[attr-defined]
    kind = registry.get(type_name).kind
    for ctx in _stages(_context(state, seed)):
        cached_before = ctx.cached.copy()
        first = _exercise(plugin, kind, ctx, registry)
        again = _exercise(plugin, kind, ctx, registry)
        assert first == again, "not deterministic under one seed"
        assert (ctx.cached == cached_before).all()


@pytest.mark.parametrize("type_name", _types())
def test_plugin_rejects_unknown_parameters(type_name: str) -> None:
    plugin, issues = _registry().create(type_name, {"no_such_parameter": 1})
    assert plugin is None and issues and "no_such_parameter" in issues[0].path


def test_snapshot_arrays_are_read_only() -> None:
    ctx = _context([("prefill", 1, 1, 1, 1)], 0)
    with pytest.raises(ValueError):
        ctx.snapshot.queued[0] = 5
    with pytest.raises(ValueError):
        ctx.cached[0] = 5
