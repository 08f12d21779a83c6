"""The one exception tree of toposched.

Every error raised on purpose by toposched code derives from :class:`ToposchedError`
and carries structured fields, so that each boundary (CLI, REST API) can render it
once: the CLI prints ``str(error)`` and exits non-zero, the API maps the class to a
problem+json status (invalid input → 422, unschedulable → 503, conflict → 409).

Tree::

    ToposchedError
    ├── InputError                 bad input from a user or a peer (→ 422 / exit 2)
    │   ├── ParseError             a document could not be read (file, line or path)
    │   │   └── WrongFormatError   the text is a recognisable *other* format
    │   └── ValidationError        a document parsed but breaks a rule (many issues)
    ├── ConflictError              two sources disagree (→ 409)
    ├── NotFoundError              an unknown name (GPU, worker, model) (→ 404)
    └── UnschedulableError         a valid request that cannot be met now (→ 503)

Foreign exceptions are wrapped where they enter (``raise ParseError(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class ToposchedError(Exception):
    """Base of every error toposched raises on purpose."""

    title = "toposched error"


@dataclass(frozen=True)
class Location:
    """Where in an input something went wrong: a file and a line or a JSON/YAML path."""

    source: str = "<input>"
    line: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
        if self.path:
            where += f" at {self.path}"
        return where


class InputError(ToposchedError):
    """Input from a user or a peer is not acceptable."""

    title = "invalid input"


class ParseError(InputError):
    """A document could not be parsed; names where and what was expected."""

    title = "parse error"

    def __init__(self, message: str, location: Location | None = None,
                 expected: str | None = None) -> None:
        self.message = message
        self.location = location or Location()
        self.expected = expected
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.location}: {self.message}"
        if self.expected:
            text += f" (expected {self.expected})"
        return text


class WrongFormatError(ParseError):
    """The text is recognisably another format than the one asked for."""

    title = "wrong input format"

    def __init__(self, found: str, wanted: str, location: Location | None = None) -> None:
        self.found = found
        self.wanted = wanted
        super().__init__(f"this is {found}, not {wanted}", location)


@dataclass(frozen=True)
class Issue:
    """One problem in a document: where it is and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ValidationError(InputError):
    """A document parsed but breaks one or more rules; all issues are reported at once."""

    title = "validation error"

    def __init__(self, source: str, issues: Sequence[Issue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.issues)} problem(s)"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)


class ConflictError(ToposchedError):
    """Two sources of truth disagree (e.g. one NIC seen on two switches)."""

    title = "conflict"

    def __init__(self, message: str, sources: Sequence[str] = ()) -> None:
        self.message = message
        self.sources = tuple(sources)
        super().__init__(message if not sources else f"{message} (sources: {', '.join(sources)})")


class NotFoundError(ToposchedError):
    """A name that is not known (GPU, host, worker, model, policy)."""

    title = "not found"

    def __init__(self, kind: str, name: str, hint: str | None = None) -> None:
        self.kind = kind
        self.name = name
        self.hint = hint
        text = f"unknown {kind} {name!r}"
        super().__init__(f"{text}; {hint}" if hint else text)


class UnschedulableError(ToposchedError):
    """A valid request that cannot be satisfied with the current cluster."""

    title = "unschedulable"

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("; ".join(self.reasons) or "unschedulable")
