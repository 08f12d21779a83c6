"""The gateway's two completion endpoints as the app serves them: plain Starlette routes
ahead of FastAPI's (the hot path), with the client token, body limit and problem+json
errors of every other endpoint, and still in the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError

from api.app import create_app
from api.gateway.relay import route_request
from api.gateway.tokens import PromptTokens
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
    first = app.router.routes[:2]  # type: ignore[attr-defined]
    assert [(r.path, r.methods) for r in first] == [(p, {"POST"}) for p in PATHS]
    assert not any(isinstance(r, APIRoute) for r in first)
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
    assert big.status_code == 413
    assert client.get(path, headers=auth).status_code == 405


def test_the_router_request_is_built_as_pydantic_would_build_it() -> None:
    tokens = PromptTokens(tuple(range(7, 1031)), 1024, "request")
    built = route_request("r-1", "m", tokens)
    assert built == RouteRequest(request_id="r-1", model="m", token_ids=list(tokens.ids),
                                 prompt_tokens=1024)
    with pytest.raises(ValidationError):  # what pydantic refuses is still refused
        route_request("r-1", "m", PromptTokens((3, -1), 2, "request"))
    with pytest.raises(ValidationError):
        route_request("", "m", tokens)
