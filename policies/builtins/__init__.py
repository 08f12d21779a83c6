"""The built-in plugins, one module per policy family; ``register_builtins`` adds them all."""

from __future__ import annotations

from policies.builtins import (
    common,
    fabric_cost,
    label_curve,
    least_loaded,
    prefix_only,
    random,
    round_robin,
    single_domain,
)
from policies.registry import Registry

_MODULES = (common, random, round_robin, least_loaded, prefix_only, label_curve,
            single_domain, fabric_cost)


def register_builtins(registry: Registry) -> None:
    """Register every built-in plugin type in ``registry``."""
    for module in _MODULES:
        module.register(registry)
