"""Loading versioned YAML/JSON documents with every error reported at once, with its path.

The one implementation behind every versioned document (inventories, link tiers,
scheduler profiles, models, capacity, workloads): bounded reading, YAML that refuses
duplicate keys (PyYAML silently keeps the last one) and names the line and column of
a syntax error, and pydantic errors turned into path-named issues that read as rules
("is required", "must be a positive integer").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pydantic
import yaml
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from topology.errors import Issue, Location, ParseError, ValidationError
from topology.source import MAX_INT_DIGITS, bounded_int, decode_capture, read_capture, strip_bom

ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)

#: Config documents are kilobytes; a bigger file is a mistake, not a document.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


# --- field types whose errors read as rules ("must be a positive integer") ----------


def _number_rule(accepts: Callable[[float], bool], message: str,
                 integer: bool = False) -> BeforeValidator:
    """A validator that refuses booleans, non-numbers and values outside a range."""

    def check(value: object) -> object:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or (integer and not isinstance(value, int))
                or not math.isfinite(value) or not accepts(value)):
            raise PydanticCustomError("number_rule", message)
        return value

    return BeforeValidator(check)


def _name_rule(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise PydanticCustomError("name", "must be a non-empty string")
    return value.strip()


PositiveInt = Annotated[int, _number_rule(lambda v: v > 0, "must be a positive integer", True)]
PositiveFloat = Annotated[float, _number_rule(lambda v: v > 0, "must be a positive number")]
NonNegativeFloat = Annotated[float, _number_rule(lambda v: v >= 0, "must be zero or more")]
UnitFraction = Annotated[float, _number_rule(lambda v: 0 < v <= 1, "must be a number in (0, 1]")]
OpenFraction = Annotated[float, _number_rule(lambda v: 0 < v < 1, "must be a number in (0, 1)")]
ShareFraction = Annotated[float, _number_rule(lambda v: 0 <= v < 1, "must be a number in [0, 1)")]
Name = Annotated[str, BeforeValidator(_name_rule)]
#: A list in the document, a tuple in the (frozen) model; strict mode would refuse lists.
NameList = Annotated[tuple[Name, ...], Field(strict=False)]

#: Pydantic's own error types, said the way toposched's documents say them.
_MESSAGES: dict[str, str] = {
    "missing": "is required", "extra_forbidden": "is not a known field",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping", "list_type": "must be a list",
    "tuple_type": "must be a list", "string_type": "must be a string",
    "int_type": "must be an integer", "float_type": "must be a number",
    "bool_type": "must be true or false", "too_short": "must not be empty",
}


# --- errors with paths ----------------------------------------------------------------


def format_path(parts: Iterable[str | int]) -> str:
    """Render a document location as ``models.llama-3-8b.num_layers`` or ``profiles[0].tp``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<document>"


def issues_from(exc: pydantic.ValidationError, prefix: Sequence[str | int] = ()) -> list[Issue]:
    """Turn every pydantic error into an :class:`Issue` with its document path."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = [part for part in err["loc"] if part != "[key]"]
        if err["type"] == "literal_error":
            message = f"must be {err.get('ctx', {}).get('expected', 'one of the listed values')}"
        else:
            message = _MESSAGES.get(err["type"], err["msg"])
        issues.append(Issue(format_path([*prefix, *loc]), message))
    return issues


def validate(model: type[ModelT], data: Any, source: str) -> ModelT:
    """Validate ``data`` against ``model``; all problems are raised together with paths."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(source, issues_from(exc)) from exc


# --- reading and parsing --------------------------------------------------------------


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys (PyYAML keeps the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue  # ``<<: *anchor`` merges are meant to be overridden by the keys beside them
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool):
            continue  # unhashable keys are refused by construct_mapping itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_INT_TAG = "tag:yaml.org,2002:int"


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    digits = sum(char.isdigit() for char in str(node.value))
    if digits > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"a {digits}-digit number (at most {MAX_INT_DIGITS} digits)",
            node.start_mark)
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
_UniqueKeyLoader.add_constructor(_INT_TAG, _bounded_int)


class FastSafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader (an order of magnitude faster on big lists) with bounded
    integers; for large machine-written documents (``kubectl get nodes -o yaml``)."""


FastSafeLoader.add_constructor(_INT_TAG, _bounded_int)


def read_text(path: str | Path, expected: str) -> str:
    """Read a document file as UTF-8 text, bounded in size, with errors naming the file."""
    where = Location(str(path))
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ParseError(f"cannot read file: {exc.strerror or exc}", where, expected) from exc
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ParseError("file is too large", where, expected)
    return decode_capture(raw, str(path), expected)


def parse_yaml(text: str, source: str, expected: str | None = None) -> Any:
    """Parse YAML (or JSON, a subset) text, refusing duplicate keys.

    Syntax errors and duplicate keys name the line and column.
    """
    try:
        return yaml.load(strip_bom(text), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = f", column {mark.column + 1}" if mark is not None else ""
        raise ParseError(f"invalid YAML{column}: {exc.problem or exc.context}",
                         Location(source, line), expected) from exc
    except yaml.YAMLError as exc:
        raise ParseError(f"invalid YAML: {exc}", Location(source), expected) from exc


def parse_document(text: str, source: str, expected: str, as_json: bool = False) -> Any:
    """Parse non-empty YAML (or, with ``as_json``, strict JSON) text into plain data."""
    if not text.strip():
        raise ParseError("document is empty", Location(source), expected)
    if not as_json:
        return parse_yaml(text, source, expected)
    try:
        return json.loads(strip_bom(text), parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid JSON: {exc.msg}", Location(source, exc.lineno),
                         expected) from exc
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number, deep nesting
        raise ParseError(f"invalid JSON: {exc}", Location(source), expected) from exc


def read_document(path: str | Path, expected: str) -> Any:
    """Read and parse a YAML or JSON (``.json`` suffix) document file into plain data."""
    text = read_text(path, expected)
    return parse_document(text, str(path), expected, as_json=str(path).lower().endswith(".json"))


def load_yaml(path: str | Path) -> Any:
    """Read and parse a YAML document file (bounded like a capture file)."""
    return parse_yaml(read_capture(path), str(path))


def load_document(model: type[ModelT], path: str | Path) -> ModelT:
    """Load a YAML/JSON file into ``model`` with path-named errors.

    A ``.json`` file is parsed as JSON: the pure-Python YAML loader took 42 s over the
    3.4 MB fabric of an 8,192-GPU cluster, ``json`` takes 0.1 s.
    """
    text = read_capture(path)
    return validate(model, parse_document(text, str(path), model.__name__,
                                          as_json=str(path).lower().endswith(".json")), str(path))


def packaged_config(name: str) -> Path:
    """Path of a default document shipped in the ``config`` package."""
    return Path(str(resources.files("config").joinpath(name)))


def packaged_text(name: str) -> str:
    """Text of a default document shipped in the ``config`` package."""
    return resources.files("config").joinpath(name).read_text(encoding="utf-8")
