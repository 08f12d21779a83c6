"""The gateway's two completion endpoints as the app serves them: the client token,
the body limit and problem+json errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.settings import Settings

PATHS = ("/v1/completions", "/v1/chat/completions")


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(gateway=True, client_token=SecretStr("c-secret"), max_body_bytes=4096)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


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
