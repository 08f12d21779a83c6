"""JSON booleans are not numbers: 422 for ``true`` where a request body wants a number.

pydantic's lax mode (what FastAPI validates request bodies with) turns ``true`` into
``1`` for ``int`` and ``float`` fields, so ``{"num_blocks": true}`` registered a worker
with one block. The body models belong to several packages and several of them need
lax mode for other conversions (JSON arrays into tuples, strings into enums), so the
check is done once, here, against each route's own request-body JSON schema (the one
the OpenAPI document publishes): :func:`enforce` wraps every route whose body schema
holds a number, reads the body, and answers 422 problem+json naming each boolean found
in a number-only position; other bodies go on to the route unchanged
(:class:`StrictNumbers`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import TypeAdapter
from starlette.routing import compile_path

from api.problems import problem
from api.security import ASGIApp, Message, Receive, Scope, Send

Schema = Mapping[str, Any]
_NUMBERS = frozenset({"integer", "number"})


class StrictNumbers:
    """ASGI middleware: 422 for booleans where a route's JSON body wants numbers.

    The routes are read from ``app`` at the first request (every router is included by
    then); only requests to a route whose body schema holds a number are looked at.
    """

    def __init__(self, app: ASGIApp, routes_of: FastAPI) -> None:
        self.app = app
        self._source = routes_of
        self._routes: list[tuple[frozenset[str], re.Pattern[str], Schema]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        schema = self._schema(scope) if scope["type"] == "http" else None
        if schema is None:
            await self.app(scope, receive, send)
            return
        messages, body = await _read(receive)
        document = None
        if b"true" in body or b"false" in body:  # else there is no boolean to find
            # not JSON (or nested too deep to parse): the route's own parsing answers it
            with contextlib.suppress(ValueError, RecursionError):
                document = json.loads(body)
        found = list(_booleans(document, schema, schema.get("$defs", {}), ("body",)))
        if not found:
            await self.app(scope, _replay(messages, receive), send)
            return
        errors = [{"path": ".".join(map(str, loc)),
                   "message": "Input should be a number, not a boolean"} for loc in found]
        answer = problem(422, "validation error", f"{len(errors)} problem(s) in the request",
                         str(scope.get("path", "")), errors=errors)
        await answer(scope, receive, send)

    def _schema(self, scope: Scope) -> Schema | None:
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return None
        if self._routes is None:
            self._routes = list(_number_bodies(self._source))
        path, method = str(scope.get("path", "")), scope["method"]
        return next((schema for methods, pattern, schema in self._routes
                     if method in methods and pattern.fullmatch(path)), None)


def _number_bodies(app: FastAPI) -> Iterator[tuple[frozenset[str], re.Pattern[str], Schema]]:
    """(methods, path pattern, body schema) of each route whose JSON body holds a number."""
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or route.body_field is None or not context.path:
            continue
        annotation = route.body_field.field_info.annotation
        schema = TypeAdapter(annotation).json_schema() if annotation is not None else {}
        if _holds_numbers(schema, schema.get("$defs", {})):
            pattern, _, _ = compile_path(context.path)
            yield frozenset(route.methods or ()), pattern, schema


async def _read(receive: Receive) -> tuple[list[Message], bytes]:
    """Every message of the request body, and the body."""
    messages, chunks = [], []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return messages, b"".join(chunks)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()
    return replayed


def _resolve(schema: Schema, defs: Schema) -> Schema:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _resolve(defs.get(ref.removeprefix("#/$defs/"), {}), defs)
    return schema


def _branches(schema: Schema, defs: Schema) -> list[Schema]:
    schema = _resolve(schema, defs)
    alternatives = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if alternatives:
        return [b for alt in alternatives for b in _branches(alt, defs)]
    return [schema]


def _types(schema: Schema) -> set[str]:
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else {kind} if isinstance(kind, str) else set()


def _holds_numbers(schema: Schema, defs: Schema, seen: frozenset[int] = frozenset()) -> bool:
    if id(schema) in seen:
        return False
    seen = seen | {id(schema)}
    for branch in _branches(schema, defs):
        if _types(branch) & _NUMBERS:
            return True
        children = [*branch.get("properties", {}).values(), branch.get("items"),
                    branch.get("additionalProperties")]
        if any(isinstance(c, Mapping) and _holds_numbers(c, defs, seen) for c in children):
            return True
    return False


def _booleans(value: Any, schema: Schema, defs: Schema,
              loc: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    """Where ``value`` holds a boolean that ``schema`` admits only as a number."""
    branches = _branches(schema, defs)
    if isinstance(value, bool):
        kinds = set().union(*map(_types, branches))
        if kinds & _NUMBERS and "boolean" not in kinds and not any(
                not _types(b) for b in branches):
            yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            for branch in branches:
                child = branch.get("properties", {}).get(key, branch.get("additionalProperties"))
                if isinstance(child, Mapping):
                    yield from _booleans(item, child, defs, (*loc, key))
                    break
    elif isinstance(value, list):
        for branch in branches:
            items = branch.get("items")
            if isinstance(items, Mapping):
                for i, item in enumerate(value):
                    yield from _booleans(item, items, defs, (*loc, i))
                break
