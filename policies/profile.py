"""Versioned YAML policy documents: plugins with parameters, profiles with weights.

Shape (``version: 1``), after llm-d's scheduler configuration::

    version: 1
    name: label-curve
    handler: pd                       # a plugin of kind profile-handler
    plugins:                          # instances: type, optional name, parameters
      - {name: pd, type: two-stage-handler, parameters: {order: decode-first}}
      - {type: prefix-scorer}
      - {type: max-score-picker}
    profiles:                         # filters, weighted scorers, one picker each
      - name: decode
        plugins: [{ref: prefix-scorer, weight: 2}, {ref: max-score-picker}]

Loading is phased and reports every problem of a phase at once, each with its
document path: first the shape, then the plugins (unknown types, bad parameters),
then the references (unknown names, weights on non-scorers, pickers per profile,
profiles the handler needs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from policies.contracts import (
    Filter,
    PairChoice,
    Picker,
    ProfileHandler,
    ProfileRunner,
    Refusal,
    Scorer,
)
from policies.pipeline import SchedulingProfile, WeightedScorer
from policies.registry import PluginKind, Registry
from policies.snapshot import CycleContext
from topology.documents import format_path, load_yaml, packaged_config
from topology.errors import Issue, NotFoundError, ValidationError

#: The packaged policy used when none is named.
DEFAULT_POLICY = "fabric-cost"


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PluginEntry(_Doc):
    """One plugin instance: its registered type, a name (default: the type), parameters."""

    type: str = Field(min_length=1)
    name: str | None = Field(default=None, min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProfilePlugin(_Doc):
    """A plugin used by a profile; scorers take a ``weight`` (default 1)."""

    ref: str = Field(min_length=1)
    weight: float | None = Field(default=None, ge=0.0)


class ProfileEntry(_Doc):
    """A named scheduling profile."""

    name: str = Field(min_length=1)
    plugins: list[ProfilePlugin] = Field(min_length=1)


class PolicyDocument(_Doc):
    """A policy document, version 1."""

    version: Literal[1]
    name: str = Field(min_length=1)
    description: str = ""
    handler: str = Field(min_length=1)
    plugins: list[PluginEntry] = Field(min_length=1)
    profiles: list[ProfileEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    """A ready policy: its handler and profiles; :meth:`schedule` runs one cycle."""

    name: str
    description: str
    handler: ProfileHandler
    profiles: Mapping[str, SchedulingProfile]

    def schedule(self, ctx: CycleContext) -> PairChoice | Refusal:
        """Choose a pair (or refuse) for ``ctx.request``."""
        profiles: Mapping[str, ProfileRunner] = self.profiles
        return self.handler.schedule(ctx, profiles)


def build_policy(data: Any, source: str, registry: Registry) -> Policy:
    """Validate a parsed policy document and build it (all issues at once per phase)."""
    doc = _shape(data, source)
    plugins, kinds, issues = _plugins(doc, registry)
    profiles = {} if issues else _profiles(doc, plugins, kinds, issues)
    handler = plugins.get(doc.handler)
    if not issues and kinds.get(doc.handler) is not PluginKind.HANDLER:
        issues.append(Issue("handler", f"{doc.handler!r} is not a profile-handler plugin"))
    if not issues and isinstance(handler, ProfileHandler):
        issues += [Issue("profiles", f"the handler needs a profile named {name!r}")
                   for name in handler.required_profiles if name not in profiles]
    if issues or not isinstance(handler, ProfileHandler):
        raise ValidationError(source, issues)
    return Policy(doc.name, doc.description, handler, profiles)


def _shape(data: Any, source: str) -> PolicyDocument:
    try:
        return PolicyDocument.model_validate(data)
    except pydantic.ValidationError as exc:
        issues = [Issue(format_path(err["loc"]), err["msg"])
                  for err in exc.errors(include_url=False)]
        raise ValidationError(source, issues) from exc


def _plugins(doc: PolicyDocument, registry: Registry,
             ) -> tuple[dict[str, object], dict[str, PluginKind], list[Issue]]:
    plugins: dict[str, object] = {}
    kinds: dict[str, PluginKind] = {}
    issues: list[Issue] = []
    for i, entry in enumerate(doc.plugins):
        name = entry.name or entry.type
        if name in plugins:
            issues.append(Issue(f"plugins[{i}].name", f"plugin name {name!r} is used twice"))
            continue
        plugin, found = registry.create(entry.type, entry.parameters, name=name,
                                        path=f"plugins[{i}].parameters")
        issues += found
        if plugin is not None:
            plugins[name], kinds[name] = plugin, registry.get(entry.type).kind
    return plugins, kinds, issues


def _profiles(doc: PolicyDocument, plugins: Mapping[str, object],
              kinds: Mapping[str, PluginKind], issues: list[Issue]) -> dict[str, SchedulingProfile]:
    profiles: dict[str, SchedulingProfile] = {}
    seen: set[str] = set()
    for i, entry in enumerate(doc.profiles):
        if entry.name in seen:
            issues.append(Issue(f"profiles[{i}].name", f"profile {entry.name!r} is defined twice"))
            continue
        seen.add(entry.name)
        built = _profile(entry, f"profiles[{i}]", plugins, kinds, issues)
        if built is not None:
            profiles[entry.name] = built
    return profiles


def _profile(entry: ProfileEntry, path: str, plugins: Mapping[str, object],
             kinds: Mapping[str, PluginKind], issues: list[Issue]) -> SchedulingProfile | None:
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    pickers: list[Picker] = []
    before = len(issues)
    for j, use in enumerate(entry.plugins):
        where, plugin, kind = f"{path}.plugins[{j}]", plugins.get(use.ref), kinds.get(use.ref)
        if plugin is None:
            issues.append(Issue(f"{where}.ref", f"no plugin named {use.ref!r}"))
        elif use.weight is not None and kind is not PluginKind.SCORER:
            issues.append(Issue(f"{where}.weight", f"{use.ref!r} is a {kind}, not a scorer"))
        elif kind is PluginKind.FILTER and isinstance(plugin, Filter):
            filters.append(plugin)
        elif kind is PluginKind.SCORER and isinstance(plugin, Scorer):
            scorers.append(WeightedScorer(plugin, 1.0 if use.weight is None else use.weight))
        elif kind is PluginKind.PICKER and isinstance(plugin, Picker):
            pickers.append(plugin)
        else:
            issues.append(Issue(f"{where}.ref", f"{use.ref!r} ({kind}) cannot be in a profile"))
    if len(pickers) != 1:
        issues.append(Issue(f"{path}.plugins", f"needs exactly one picker, has {len(pickers)}"))
    if len(issues) > before:
        return None
    return SchedulingProfile(entry.name, tuple(filters), tuple(scorers), pickers[0])


def load_policy(path: str | Path, registry: Registry) -> Policy:
    """Load a policy document file (YAML or JSON)."""
    return build_policy(load_yaml(path), str(path), registry)


def policy_names() -> list[str]:
    """Names of the packaged policies (``config/profiles/*.yaml``)."""
    return sorted(p.stem for p in packaged_config("profiles").glob("*.yaml"))


def resolve_policy(name_or_path: str | None, registry: Registry) -> Policy:
    """A packaged policy by name, or a policy document by path (``None``: the default)."""
    name = name_or_path or DEFAULT_POLICY
    if name.endswith((".yaml", ".yml", ".json")) or "/" in name:
        return load_policy(name, registry)
    path = packaged_config("profiles") / f"{name}.yaml"
    if not path.is_file():
        raise NotFoundError("policy", name, f"known: {', '.join(policy_names())}")
    return load_policy(path, registry)
