"""Policy documents: the packaged ones load, broken ones report every problem with its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from policies.profile import build_policy, load_policy, policy_names, resolve_policy
from policies.registry import default_registry
from topology.errors import NotFoundError, ParseError, ValidationError

BASELINES = {"random", "round-robin", "least-loaded", "prefix-only", "label-curve",
             "single-domain"}


def _doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1, "name": "test", "handler": "two-stage-handler",
        "plugins": [{"type": "two-stage-handler"}, {"type": "load-scorer"},
                    {"type": "max-score-picker"}],
        "profiles": [{"name": side, "plugins": [{"ref": "load-scorer", "weight": 2},
                                                 {"ref": "max-score-picker"}]}
                     for side in ("prefill", "decode")],
    }
    doc.update(overrides)
    return doc


def _issues(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        build_policy(doc, "policy.yaml", default_registry())
    assert caught.value.source == "policy.yaml"
    return {issue.path: issue.message for issue in caught.value.issues}


def test_packaged_policies_load() -> None:
    assert set(policy_names()) == BASELINES | {"fabric-cost"}
    registry = default_registry()
    for name in policy_names():
        assert resolve_policy(name, registry).name == name
    assert resolve_policy(None, registry).name == "fabric-cost"


def test_unknown_policy_name_lists_the_known_ones() -> None:
    with pytest.raises(NotFoundError, match="fabric-cost"):
        resolve_policy("nonexistent", default_registry())


def test_a_valid_document_builds() -> None:
    policy = build_policy(_doc(), "<test>", default_registry())
    assert set(policy.profiles) == {"prefill", "decode"}
    assert policy.profiles["prefill"].scorers[0].weight == 2


def test_shape_errors_come_together_with_paths() -> None:
    issues = _issues(_doc(version=2, handler=None, extra_key=1))
    assert {"version", "handler", "extra_key"} <= set(issues)


def test_plugin_errors_come_together_with_paths() -> None:
    plugins = [{"type": "two-stage-handler", "parameters": {"order": "sideways"}},
               {"type": "no-such-plugin"}, {"type": "load-scorer"},
               {"type": "cache-aware-picker", "parameters": {"cache_threshold": 7}},
               {"type": "load-scorer"}]
    issues = _issues(_doc(plugins=plugins))
    assert "plugins[0].parameters.order" in issues
    assert "plugins[1].type" in issues and "no-such-plugin" in issues["plugins[1].type"]
    assert "plugins[3].parameters.cache_threshold" in issues
    assert "used twice" in issues["plugins[4].name"]


def test_reference_errors_come_together_with_paths() -> None:
    profiles = [{"name": "prefill", "plugins": [{"ref": "ghost"},
                                                {"ref": "max-score-picker", "weight": 1}]},
                {"name": "prefill", "plugins": [{"ref": "max-score-picker"}]}]
    issues = _issues(_doc(profiles=profiles))
    assert "no plugin named 'ghost'" in issues["profiles[0].plugins[0].ref"]
    assert "not a scorer" in issues["profiles[0].plugins[1].weight"]
    assert "exactly one picker" in issues["profiles[0].plugins"]
    assert "defined twice" in issues["profiles[1].name"]


def test_handler_must_be_a_handler_with_its_profiles() -> None:
    assert "not a profile-handler" in _issues(_doc(handler="load-scorer"))["handler"]
    one_profile = _doc(profiles=[_doc()["profiles"][0]])
    assert "'decode'" in _issues(one_profile)["profiles"]


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nname: x\nplugins: [\n  {type: a\n")
    with pytest.raises(ParseError) as caught:
        load_policy(path, default_registry())
    assert caught.value.location.source == str(path) and caught.value.location.line


def test_a_document_file_with_several_errors(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    doc = _doc(plugins=[{"type": "two-stage-handler"}, {"type": "bogus"},
                        {"type": "max-score-picker", "parameters": {"x": 1}}])
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValidationError) as caught:
        load_policy(path, default_registry())
    text = str(caught.value)
    assert str(path) in text and "plugins[1].type" in text and "plugins[2].parameters.x" in text
