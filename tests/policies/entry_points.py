"""Simulated entry points: what ``importlib.metadata`` reports for installed plugins."""

from __future__ import annotations

from importlib.metadata import EntryPoint

from policies.registry import ENTRY_POINT_GROUP


def entry_point(name: str, value: str) -> EntryPoint:
    """An entry point of the ``toposched.policies`` group."""
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def example_plugin_entry_point() -> EntryPoint:
    """The entry point docs/example-plugin/pyproject.toml declares."""
    return entry_point("free-kv", "toposched_free_kv:register")
