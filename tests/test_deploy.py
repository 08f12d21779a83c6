"""The deployment files (deploy/) describe what the code does: every toposched command
line in them parses, every TOPOSCHED_* variable is a setting, every instance document
is valid, the probes exist, Redis persists, and no secret is committed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from api.cli.main import build_parser
from api.settings import Settings
from engines.instance import parse_instances_text

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc


def _containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for where, doc in _documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            yield f"{where}/{container['name']}", container


def test_there_are_manifests() -> None:
    assert MANIFESTS, "deploy/k8s holds no manifest"


def test_every_toposched_command_line_parses() -> None:
    seen = 0
    for where, container in _containers():
        if container.get("command") != ["toposched"]:
            continue
        args = container["args"]
        try:
            build_parser(args[0]).parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: toposched {' '.join(args)} does not parse")
        seen += 1
    assert seen >= 2


def test_every_toposched_variable_is_a_setting() -> None:
    for where, container in _containers():
        for env in container.get("env", []):
            name = env["name"]
            if name.startswith("TOPOSCHED_"):
                field = name.removeprefix("TOPOSCHED_").lower()
                assert field in Settings.model_fields, f"{where}: {name} is no setting"


def test_instance_documents_are_valid() -> None:
    checked = 0
    for where, doc in _documents():
        for key, text in (doc.get("data") or {}).items():
            if key.endswith(".yaml") and "instances:" in text:
                parse_instances_text(text, f"{where}/{key}")
                checked += 1
    assert checked >= 2


def test_probes_name_routes_the_service_has() -> None:
    from api.app import create_app

    paths = set(create_app(Settings()).openapi()["paths"])
    for where, container in _containers():
        for probe in ("livenessProbe", "readinessProbe"):
            get = container.get(probe, {}).get("httpGet")
            if get is not None:
                assert get["path"] in paths, f"{where}: {probe} {get['path']}"


def test_redis_keeps_an_append_only_file() -> None:
    for where, container in _containers():
        if container["name"] == "redis":
            args = container["args"]
            assert args[args.index("--appendonly") + 1] == "yes", where


def test_no_secret_is_committed() -> None:
    for where, doc in _documents():
        assert doc["kind"] != "Secret", f"{where}: create secrets with kubectl, never commit"


def test_the_image_installs_nixl_as_bootstrap_does() -> None:
    pins = set(re.findall(r"'(nixl[-a-z0-9]*==[0-9.]+)'", (DEPLOY / "Dockerfile").read_text()))
    bootstrap = (DEPLOY.parent / "scripts" / "bootstrap.sh").read_text()
    assert pins and all(pin in bootstrap for pin in pins)
