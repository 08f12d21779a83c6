"""``POST /v1/transfers`` and ``GET /v1/transfers/{id}`` are served by lean Starlette
routes ahead of FastAPI's (api/routers/transfers.py): every answer, refusals included,
is the one the FastAPI routes alone give for the same request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import security
from api.routers import transfers
from tests.api.service_builders import (
    WORKER,
    bearer,
    cluster,
    load_cluster,
    make_app,
    worker_json,
)

BODY = {"src": "prefill-0", "dst": "decode-0", "src_blocks": [1, 2], "dst_blocks": [3, 4]}


def _client(lean: bool) -> TestClient:
    app = make_app()
    if not lean:  # the reference: FastAPI's routes alone, no fast path ahead of them
        app.router.routes[:] = [
            route for route in app.router.routes if not isinstance(route, transfers._LeanRoute)
        ]
        app.user_middleware[:] = [
            layer for layer in app.user_middleware if layer.cls is not transfers.SubmitFastPath
        ]
    client = TestClient(app)
    client.__enter__()
    spec = cluster(hosts=2)
    load_cluster(client, spec)
    h0, h1 = (h.name for h in spec.hosts)
    for name, role, gpu in (
        ("prefill-0", "prefill", f"{h0}/gpu0"),
        ("decode-0", "decode", f"{h1}/gpu0"),
    ):
        answer = client.post(
            "/v1/workers",
            headers=bearer(WORKER),
            json=worker_json(name, role, [gpu], num_blocks=16),
        )
        assert answer.status_code == 201, answer.text
    return client


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[TestClient, TestClient]]:
    lean, plain = _client(True), _client(False)
    yield lean, plain
    lean.__exit__(None, None, None)
    plain.__exit__(None, None, None)


def _same(value: Any) -> Any:
    """An answer with the times that differ between the two apps taken out."""
    if isinstance(value, dict):
        return {k: _same(v) for k, v in value.items() if k not in ("created_at", "not_after")}
    if isinstance(value, list):
        return [_same(v) for v in value]
    return value


def _answer(client: TestClient, method: str, path: str, **kwargs: Any) -> tuple[Any, ...]:
    response = client.request(method, path, **kwargs)
    try:
        body = _same(response.json())
    except ValueError:
        body = response.text
    return (
        response.status_code,
        response.headers.get("content-type"),
        response.headers.get("x-record-version"),
        response.headers.get("allow"),
        body,
    )


def test_the_lean_routes_come_first() -> None:
    app = make_app()  # (a gateway's completion routes would go ahead of them)
    first = app.router.routes[:2]
    assert all(isinstance(route, transfers._LeanRoute) for route in first)


class _Chunks:
    """A body sent in chunks (no declared length), as often as it is asked for."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)


SUBMITS: list[tuple[str, dict[str, Any]]] = [
    ("valid", {"json": {**BODY, "plan_id": "p-ok"}}),
    ("operator token", {"json": {**BODY, "plan_id": "p-op"}, "headers": bearer()}),
    ("same plan id again", {"json": {**BODY, "plan_id": "p-ok"}}),
    ("missing fields", {"json": {"src": "prefill-0"}}),
    ("extra field", {"json": {**BODY, "colour": "red"}}),
    ("boolean for a number", {"json": {**BODY, "deadline_s": True}}),
    ("unknown worker", {"json": {**BODY, "dst": "nobody"}}),
    (
        "not JSON",
        {
            "content": b"{not json",
            "headers": {**bearer(WORKER), "content-type": "application/json"},
        },
    ),
    ("a list", {"json": [BODY]}),
    (
        "nested too deep",
        {
            "content": b"[" * 100_000 + b"1" + b"]" * 100_000,
            "headers": {**bearer(WORKER), "content-type": "application/json"},
        },
    ),
    (
        "text/plain",
        {
            "content": b'{"src": "prefill-0"}',
            "headers": {**bearer(WORKER), "content-type": "text/plain"},
        },
    ),
    (
        "empty body",
        {"content": b"", "headers": {**bearer(WORKER), "content-type": "application/json"}},
    ),
    ("prefers to wait", {"json": {**BODY, "plan_id": "p-waits"},
                         "headers": {**bearer(WORKER), "Prefer": "wait=0.05"}}),
    ("bad wait preference", {"json": {**BODY, "plan_id": "p-no-wait"},
                             "headers": {**bearer(WORKER), "Prefer": "wait=x"}}),
    ("no token", {"json": BODY, "headers": {}}),
    ("wrong token", {"json": BODY, "headers": bearer("nope")}),
    ("a boolean in a string", {"json": {**BODY, "plan_id": "untrue-1"}}),
    ("boolean where a list goes", {"json": {**BODY, "dst_blocks": False}}),
    (
        "over the body limit, chunked",
        {
            "content": _Chunks([b'{"src": "', b" " * (16 << 20), b'"}']),
            "headers": {**bearer(WORKER), "content-type": "application/json"},
        },
    ),
    (
        "declared over the body limit",
        {
            "content": b"{}",
            "headers": {**bearer(WORKER), "content-type": "application/json",
                        "content-length": str(1 << 30)},
        },
    ),
]


@pytest.mark.parametrize(("case", "kwargs"), SUBMITS, ids=[case for case, _ in SUBMITS])
def test_submit_answers_as_fastapi_does(
    pair: tuple[TestClient, TestClient], case: str, kwargs: dict[str, Any]
) -> None:
    kwargs = {"headers": bearer(WORKER), **kwargs}
    lean, plain = (_answer(client, "POST", "/v1/transfers", **kwargs) for client in pair)
    assert lean == plain, case
    if case == "valid":
        assert lean[0] == 201


READS = [
    "/v1/transfers/p-ok",
    "/v1/transfers/p-ok?wait_s=0.01&after=1",
    "/v1/transfers/p-ok?ended=yes&wait_s=0",
    "/v1/transfers/p-ok?wait_s=-1",
    "/v1/transfers/p-ok?after=x",
    "/v1/transfers/p-ok?ended=maybe",
    "/v1/transfers/p-ok?wait_s=",
    "/v1/transfers/p-ok?wait_s=1e-3&wait_s=0",
    "/v1/transfers/p-ok?other=1",
    "/v1/transfers/nope",
]


@pytest.mark.parametrize("path", READS)
def test_record_reads_answer_as_fastapi_does(
    pair: tuple[TestClient, TestClient], path: str
) -> None:
    for client in pair:  # the record exists on both sides
        client.post("/v1/transfers", headers=bearer(WORKER), json={**BODY, "plan_id": "p-ok"})
    lean, plain = (_answer(client, "GET", path, headers=bearer(WORKER)) for client in pair)
    assert lean == plain


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", "/v1/transfers/p-ok"),
        ("PUT", "/v1/transfers"),
        ("GET", "/v1/transfers"),
        ("DELETE", "/v1/transfers/p-ok"),
    ],
)
def test_other_methods_answer_as_fastapi_does(
    pair: tuple[TestClient, TestClient], method: str, path: str
) -> None:
    lean, plain = (_answer(client, method, path, headers=bearer(WORKER)) for client in pair)
    assert lean == plain


def test_plain_requests_stay_on_the_lean_routes(
    pair: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[str] = []

    async def hand_back(self: Any, scope: Any, receive: Any, send: Any) -> None:
        handed.append(scope["path"])
        raise AssertionError("handed back to FastAPI")

    monkeypatch.setattr(transfers._HandBack, "__call__", hand_back)
    lean = pair[0]
    assert (
        lean.post(
            "/v1/transfers", headers=bearer(WORKER), json={**BODY, "plan_id": "p-lean"}
        ).status_code
        == 201
    )
    answer = lean.get("/v1/transfers/p-lean?wait_s=0&after=0&ended=false", headers=bearer(WORKER))
    assert answer.status_code == 200 and answer.headers["x-record-version"]
    assert handed == []
    with pytest.raises(AssertionError):  # and a refusal is handed back
        lean.get("/v1/transfers/p-lean?wait_s=-1", headers=bearer(WORKER))
    assert handed == ["/v1/transfers/p-lean"]


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("wait=2", 2.0), ("return=minimal, wait=0.5", 0.5),
    ("WAIT = 3 ", 3.0), ('wait="1.5"', 1.5), ("wait=1; x=y", 1.0), ("wait=-1", None),
    ("wait=nan", None), ("wait=inf", None), ("wait=", None), ("waiting=4", None)])
def test_the_wait_preference_is_read_as_rfc_7240_writes_it(
        header: str | None, seconds: float | None) -> None:
    assert transfers.prefer_wait(header) == seconds


def test_a_submission_that_prefers_to_wait_answers_once_the_wait_is_over(
        pair: tuple[TestClient, TestClient]) -> None:
    """No sidecar ends it here: the answer comes after the wait, pending, with the
    version to long-poll from."""
    for client in pair:
        answer = client.post("/v1/transfers", headers={**bearer(WORKER), "Prefer": "wait=0.05"},
                             json={**BODY, "plan_id": "p-wait"})
        assert answer.status_code == 201
        assert answer.json()["state"] == "pending" and answer.headers["x-record-version"]


def test_a_plain_submit_takes_the_fast_path_and_the_rest_the_app(
    pair: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SubmitFastPath`` answers a plainly valid submit without the app's layers; a
    request any of them would look at goes through them all."""
    seen: list[str] = []
    through = security.Authenticate.__call__

    async def counted(self: Any, scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await through(self, scope, receive, send)

    monkeypatch.setattr(security.Authenticate, "__call__", counted)
    lean = pair[0]
    fast = lean.post("/v1/transfers", headers=bearer(WORKER), json={**BODY, "plan_id": "p-fast"})
    assert fast.status_code == 201 and seen == []
    for kwargs in ({"headers": bearer(WORKER), "json": {**BODY, "deadline_s": True}},
                   {"headers": bearer("nope"), "json": BODY},
                   {"headers": bearer(WORKER), "json": {**BODY, "dst": "nobody"}}):
        lean.post("/v1/transfers", **kwargs)
    assert seen == ["/v1/transfers", "/v1/transfers"]  # the unknown worker: fast, 404
