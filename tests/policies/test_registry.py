"""The registry: built-ins, entry-point plugins, the allowlist and duplicate names."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from policies.profile import build_policy
from policies.registry import ENTRY_POINT_GROUP, PluginKind, PluginType, Registry, default_registry
from scheduler.router.router import Decision, Router
from tests.policies.entry_points import entry_point
from tests.scheduler.router.builders import (
    SAME_RAIL,
    SAME_RAIL_2,
    SOURCE,
    chain,
    fabric,
    snapshot,
    worker,
)
from topology.errors import ConflictError, NotFoundError

EXAMPLE = Path(__file__).parents[2] / "docs" / "example-plugin"


def _declared_entry_points() -> list[tuple[str, str]]:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    return list(project["entry-points"][ENTRY_POINT_GROUP].items())


@pytest.fixture
def example_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))


def test_builtins_are_registered_once_each() -> None:
    names = [t.name for t in default_registry().types()]
    assert len(names) == len(set(names))
    assert {"fabric-cost-handler", "two-stage-handler", "label-curve-scorer",
            "cache-aware-picker", "kv-router-scorer", "same-domain-filter"} <= set(names)


def test_two_registries_share_nothing() -> None:
    one, two = default_registry(), default_registry()
    one.register(PluginType("extra-scorer", PluginKind.SCORER, lambda n, p: None))
    with pytest.raises(NotFoundError):
        two.get("extra-scorer")


def test_duplicate_names_are_an_error() -> None:
    registry = default_registry()
    with pytest.raises(ConflictError, match="load-scorer"):
        registry.register(PluginType("load-scorer", PluginKind.SCORER, lambda n, p: None))


def test_the_example_plugin_loads_through_its_declared_entry_point(example_path: None) -> None:
    declared = _declared_entry_points()
    assert declared == [("free-kv", "toposched_free_kv:register")]
    registry = default_registry()
    loaded = registry.load_entry_points(entry_points=[entry_point(*declared[0])])
    assert loaded == ["free-kv"]
    assert registry.get("free-kv-scorer").kind is PluginKind.SCORER
    assert registry.origin("free-kv-scorer") == "entry-point:free-kv"


def test_the_example_plugin_routes_requests(example_path: None) -> None:
    registry = default_registry()
    registry.load_entry_points(entry_points=[entry_point(*_declared_entry_points()[0])])
    policy = build_policy({
        "version": 1, "name": "free-kv", "handler": "two-stage-handler",
        "plugins": [{"type": "two-stage-handler"}, {"type": "free-kv-scorer"},
                    {"type": "max-score-picker"}],
        "profiles": [{"name": side, "plugins": [{"ref": "free-kv-scorer", "weight": 1},
                                                 {"ref": "max-score-picker"}]}
                     for side in ("prefill", "decode")],
    }, "<test>", registry)
    snap = snapshot([worker("p", "prefill", SOURCE),
                     worker("full", "decode", SAME_RAIL, free_kv_blocks=10),
                     worker("roomy", "decode", SAME_RAIL_2, free_kv_blocks=90_000)])
    result = Router(fabric(), policy).route({"block_hashes": chain(2)}, snap)
    assert isinstance(result, Decision) and result.decode.worker == "roomy"


def test_allowlist_skips_other_entry_points(example_path: None) -> None:
    registry = default_registry()
    loaded = registry.load_entry_points(
        allow={"something-else"}, entry_points=[entry_point("free-kv",
                                                            "toposched_free_kv:register")])
    assert loaded == []
    with pytest.raises(NotFoundError):
        registry.get("free-kv-scorer")


def test_entry_point_reusing_a_builtin_name_is_an_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clashing_plugin.py").write_text(
        "from policies.registry import PluginKind, PluginType\n"
        "def register(registry):\n"
        "    registry.register(PluginType('load-scorer', PluginKind.SCORER, object))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConflictError, match="entry-point:clash"):
        default_registry().load_entry_points(
            entry_points=[entry_point("clash", "clashing_plugin:register")])
    sys.modules.pop("clashing_plugin", None)


def test_two_entry_points_registering_one_name_conflict(example_path: None) -> None:
    registry = Registry()
    ep = entry_point("free-kv", "toposched_free_kv:register")
    with pytest.raises(ConflictError, match="free-kv-scorer"):
        registry.load_entry_points(entry_points=[ep, entry_point("again", ep.value)])


def test_a_non_callable_entry_point_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not_callable_plugin.py").write_text("register = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConflictError, match="not callable"):
        Registry().load_entry_points(
            entry_points=[entry_point("bad", "not_callable_plugin:register")])
    sys.modules.pop("not_callable_plugin", None)


def test_unknown_type_is_reported_as_an_issue() -> None:
    plugin, issues = default_registry().create("nope", name="x", path="plugins[3].parameters")
    assert plugin is None and issues[0].path == "plugins[3].type"


def test_an_entry_point_that_cannot_be_imported_is_reported() -> None:
    with pytest.raises(NotFoundError, match="no_such_plugin_module"):
        Registry().load_entry_points(
            entry_points=[entry_point("missing", "no_such_plugin_module:register")])
