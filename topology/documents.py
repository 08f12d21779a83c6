"""Loading versioned YAML/JSON documents with every error reported at once, with its path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from topology.errors import Issue, Location, ParseError, ValidationError
from topology.source import read_capture

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


def packaged_config(name: str) -> Path:
    """Path of a default document shipped in the ``config`` package."""
    return Path(str(resources.files("config").joinpath(name)))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML (or JSON, a subset) text; syntax errors name the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        column = f", column {mark.column + 1}" if mark is not None else ""
        raise ParseError(f"invalid YAML{column}: {exc.problem}", Location(source, line)) from exc
    except yaml.YAMLError as exc:
        raise ParseError(f"invalid YAML: {exc}", Location(source)) from exc


def load_yaml(path: str | Path) -> Any:
    """Read and parse a YAML document file."""
    return parse_yaml(read_capture(path), str(path))


def format_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``a.b[3].c``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<document>"


def validate(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate ``data`` against ``model``; all problems are raised together with paths."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        issues = [Issue(format_path(err["loc"]), err["msg"]) for err in exc.errors()]
        raise ValidationError(source, issues) from exc


def load_document(model: type[ModelT], path: str | Path) -> ModelT:
    """Load a YAML/JSON file into ``model`` with path-named errors."""
    return validate(model, load_yaml(path), str(path))
