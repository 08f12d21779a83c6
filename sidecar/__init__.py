"""The KV-transfer sidecar that runs next to a serving engine.

Only :mod:`sidecar.nixl_adapter` imports NIXL, and only the sidecar process loads it
(:mod:`sidecar.runner`); the other modules are plain Python and safe to import anywhere.
"""
