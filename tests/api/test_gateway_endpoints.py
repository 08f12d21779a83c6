"""The gateway's two completion endpoints as the app serves them: one ASGI layer ahead of
FastAPI's (the hot path), with the client token, body limit and problem+json errors of
every other endpoint, and still in the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from api.app import create_app
from api.gateway.relay import route_request
from api.gateway.tokens import PromptTokens
from api.routers.openai import CompletionsFastPath
from api.settings import Settings
from scheduler.router.router import RouteRequest

PATHS = ("/v1/completions", "/v1/chat/completions")


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(gateway=True, client_token=SecretStr("c-secret"), max_body_bytes=4096)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_completion_endpoints_skip_fastapis_routing(client: TestClient) -> None:
    app = client.app
    assert app.user_middleware[0].cls is CompletionsFastPath  # type: ignore[attr-defined]
    paths = client.get("/openapi.json").json()["paths"]
    assert all("post" in paths[p] and "requestBody" in paths[p]["post"] for p in PATHS)


@pytest.mark.parametrize("path", PATHS)
def test_the_client_token_body_limit_and_errors_hold(client: TestClient, path: str) -> None:
    body = {"model": "nope", "prompt": "x", "messages": []}
    missing = client.post(path, json=body)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert client.post(path, json=body,
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": "Bearer c-secret"}
    unknown = client.post(path, json=body, headers=auth)
    assert unknown.status_code == 404 and unknown.json()["detail"].startswith("unknown model")
    bad = client.post(path, content=b"[1]", headers=auth)
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "body"
    big = client.post(path, content=b"x" * 5000, headers=auth)
    assert big.status_code == 413 and big.headers["connection"] == "close"
    assert client.get(path, headers=auth).status_code == 405


@pytest.mark.parametrize(("chunks", "status"), [((b"x" * 3000, b"x" * 3000), 413),
                                                 ((b'{"model"',), 408)])
def test_a_body_streamed_past_the_limit_or_too_slowly_is_refused(
        chunks: tuple[bytes, ...], status: int) -> None:
    """No declared length: the limits hold while the body is read (408: the rest of
    the body never comes)."""
    settings = Settings(gateway=True, max_body_bytes=4096, body_timeout_s=0.2)
    app = create_app(settings)
    sent: list[dict[str, Any]] = []
    pending = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(5)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": PATHS[0], "raw_path": PATHS[0].encode(),
             "root_path": "", "scheme": "http", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "http_version": "1.1",
             "asgi": {"version": "3.0"}}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == status and len(sent) == 2


def test_the_router_request_is_built_as_pydantic_would_build_it() -> None:
    tokens = PromptTokens(tuple(range(7, 1031)), 1024, "request")
    built = route_request("r-1", "m", tokens)
    assert built == RouteRequest(request_id="r-1", model="m", token_ids=list(tokens.ids),
                                 prompt_tokens=1024)
    with pytest.raises(ValidationError):  # what pydantic refuses is still refused
        route_request("r-1", "m", PromptTokens((3, -1), 2, "request"))
    with pytest.raises(ValidationError):
        route_request("", "m", tokens)
