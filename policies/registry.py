"""The plugin registry: plugin types by kebab-case name, built-ins and entry points.

One registry object (no module-level singleton): :func:`default_registry` makes a
fresh one holding the built-ins, :meth:`Registry.load_entry_points` adds plugins
that installed packages declare in the entry-point group ``toposched.policies``.
Each entry point names a callable ``register(registry)``; only names on the
allowlist are loaded, and a type name registered twice is a
:class:`~topology.errors.ConflictError` (as in pluggy and vLLM's plugin loader).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import pydantic
from pydantic import BaseModel, ConfigDict

from topology.errors import ConflictError, Issue, NotFoundError

log = logging.getLogger(__name__)

#: The entry-point group plugin packages declare.
ENTRY_POINT_GROUP = "toposched.policies"
#: The environment variable holding the allowlist of entry-point names (commands and
#: ``toposched serve`` read it; see :func:`parse_allowlist`).
PLUGINS_ENV = "TOPOSCHED_PLUGINS"


class PluginKind(StrEnum):
    """The extension point a plugin type fills."""

    FILTER = "filter"
    SCORER = "scorer"
    PICKER = "picker"
    HANDLER = "profile-handler"


class NoParameters(BaseModel):
    """Parameters of a plugin that takes none."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class PluginType:
    """A registered plugin type: its name, kind, parameter model and factory."""

    name: str
    kind: PluginKind
    factory: Callable[[str, Any], object]
    parameters: type[BaseModel] = NoParameters
    summary: str = ""


class PluginSink(Protocol):
    """What a plugin package's ``register(sink)`` entry point receives."""

    def register(self, plugin_type: PluginType) -> None:
        """Add one plugin type."""
        ...


class _EntryPoint(Protocol):
    name: str
    value: str

    def load(self) -> Any: ...


class Registry:
    """Plugin types by name; builds plugin instances from validated parameters."""

    def __init__(self) -> None:
        """Create an empty registry."""
        self._types: dict[str, PluginType] = {}
        self._origin: dict[str, str] = {}

    def register(self, plugin_type: PluginType, *, origin: str = "builtin") -> None:
        """Add a plugin type; a name taken already raises :class:`ConflictError`."""
        taken = self._origin.get(plugin_type.name)
        if taken is not None:
            raise ConflictError(f"plugin type {plugin_type.name!r} is registered twice",
                                (taken, origin))
        self._types[plugin_type.name] = plugin_type
        self._origin[plugin_type.name] = origin

    def get(self, name: str) -> PluginType:
        """The plugin type called ``name`` (:class:`NotFoundError` if unknown)."""
        found = self._types.get(name)
        if found is None:
            raise NotFoundError("plugin type", name, f"known: {', '.join(sorted(self._types))}")
        return found

    def types(self) -> tuple[PluginType, ...]:
        """Every registered type, sorted by name."""
        return tuple(self._types[name] for name in sorted(self._types))

    def origin(self, name: str) -> str:
        """Where a type came from: ``builtin`` or ``entry-point:NAME``."""
        return self._origin[name]

    def create(self, type_name: str, parameters: Mapping[str, Any] | None = None, *,
               name: str | None = None, path: str = "parameters") -> tuple[object, list[Issue]]:
        """Build a plugin; returns ``(plugin or None, issues)`` with document paths."""
        found = self._types.get(type_name)
        if found is None:
            return None, [Issue(path.rsplit(".", 1)[0] + ".type",
                                f"unknown plugin type {type_name!r}")]
        try:
            params = found.parameters.model_validate(dict(parameters or {}))
        except pydantic.ValidationError as exc:
            return None, [_issue(path, err) for err in exc.errors(include_url=False)]
        return found.factory(name or type_name, params), []

    def load_entry_points(self, allow: Collection[str] | None = None, *,
                          entry_points: Iterable[_EntryPoint] | None = None) -> list[str]:
        """Load plugin packages of group ``toposched.policies``; returns the names loaded.

        ``allow`` lists the entry-point names that may load (``None``: all of them);
        others are skipped and logged. ``entry_points`` replaces discovery (tests).
        """
        found = (importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
                 if entry_points is None else entry_points)
        loaded: list[str] = []
        seen: set[tuple[str, str]] = set()
        for ep in found:
            if allow is not None and ep.name not in allow:
                log.info("skipping plugin entry point %s: not on the allowlist (%s)",
                         ep.name, PLUGINS_ENV)
                continue
            if (ep.name, ep.value) in seen:  # one package seen on two sys.path entries
                continue
            seen.add((ep.name, ep.value))
            self._load_one(ep)
            loaded.append(ep.name)
        return loaded

    def _load_one(self, ep: _EntryPoint) -> None:
        try:
            register = ep.load()
        except (ImportError, AttributeError) as exc:
            raise NotFoundError("plugin entry point", f"{ep.name} = {ep.value}",
                                f"cannot load it: {exc}") from exc
        if not callable(register):
            raise ConflictError(f"entry point {ep.name!r} ({ep.value}) is not callable",
                                (f"entry-point:{ep.name}",))
        register(_Scoped(self, f"entry-point:{ep.name}"))


class _Scoped:
    """The registry as a plugin package sees it: registrations carry their origin."""

    def __init__(self, registry: Registry, origin: str) -> None:
        self._registry = registry
        self._origin = origin

    def register(self, plugin_type: PluginType) -> None:
        self._registry.register(plugin_type, origin=self._origin)


def _issue(path: str, err: Any) -> Issue:
    loc = ".".join(str(part) for part in err["loc"])
    return Issue(f"{path}.{loc}" if loc else path, err["msg"])


def parse_allowlist(text: str | None) -> frozenset[str] | None:
    """The entry-point names of a comma-separated allowlist (``None``: no list, all load;
    an empty text: none loads)."""
    if text is None:
        return None
    return frozenset(filter(None, (part.strip() for part in text.split(","))))


def plugin_allowlist() -> str | None:
    """The allowlist commands read from ``TOPOSCHED_PLUGINS`` (unset: ``None``)."""
    return os.environ.get(PLUGINS_ENV)


def installed_registry(allow: str | None) -> Registry:
    """The built-ins and the installed plugin packages that ``allow`` admits (a
    comma-separated list of entry-point names; ``None``: every installed one)."""
    return default_registry(entry_points=True, allow=parse_allowlist(allow))


def default_registry(*, entry_points: bool = False,
                     allow: Collection[str] | None = None) -> Registry:
    """A new registry with the built-in plugins (and, if asked, installed plugins)."""
    from policies.builtins import register_builtins

    registry = Registry()
    register_builtins(registry)
    if entry_points:
        registry.load_entry_points(allow)
    return registry
