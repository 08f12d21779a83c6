"""Plugins every test directory may use."""

pytest_plugins = ("tests.engines.vllm_fixtures",)
