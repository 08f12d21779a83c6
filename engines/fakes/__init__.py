"""A protocol-faithful fake serving engine (vLLM or SGLang flavour) for tests, the
gateway benchmark and demos: :mod:`engines.fakes.server` is the ASGI app,
``python -m engines.fakes`` runs one."""
