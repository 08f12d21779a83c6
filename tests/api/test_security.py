"""Bearer tokens with two roles, constant-time checks, body size limits."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.security import AuthError, BodyLimit, Role, TokenAuth, auth_error_handler, require


def _app(worker: str | None = "w-secret", operator: str | None = "o-secret",
         max_bytes: int = 1024) -> TestClient:
    app = FastAPI()
    app.state.auth = TokenAuth(worker, operator)
    app.add_exception_handler(AuthError, auth_error_handler)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)

    @app.post("/topology", dependencies=[require()])
    async def change_topology() -> dict[str, str]:
        return {"ok": "operator"}

    @app.post("/heartbeat", dependencies=[require(Role.WORKER)])
    async def heartbeat(body: dict[str, str]) -> dict[str, int]:
        return {"size": len(body)}

    return TestClient(app)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_operators_alone_change_topology() -> None:
    client = _app()
    assert client.post("/topology", headers=_bearer("o-secret")).status_code == 200
    denied = client.post("/topology", headers=_bearer("w-secret"))
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"


def test_workers_and_operators_may_heartbeat() -> None:
    client = _app()
    for token in ("w-secret", "o-secret"):
        assert client.post("/heartbeat", json={}, headers=_bearer(token)).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"},
                                     {"Authorization": "Basic w-secret"},
                                     {"Authorization": "Bearer "}])
def test_missing_or_wrong_tokens_are_401(headers: dict[str, str]) -> None:
    response = _app().post("/heartbeat", json={}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "secret" not in response.text


def test_no_tokens_configured_means_auth_off() -> None:
    client = _app(worker=None, operator=None)
    assert client.post("/topology").status_code == 200


def test_oversized_bodies_get_413_problem() -> None:
    client = _app(max_bytes=64)
    response = client.post("/heartbeat", json={"x": "y" * 200}, headers=_bearer("w-secret"))
    assert response.status_code == 413
    assert response.json()["title"] == "payload too large"


def test_chunked_bodies_are_counted_too() -> None:
    client = _app(max_bytes=64)

    def chunks():  # no Content-Length: the middleware must count what arrives
        yield b'{"x": "'
        yield b"y" * 200
        yield b'"}'

    response = client.post("/heartbeat", content=chunks(),
                           headers={**_bearer("w-secret"), "Content-Type": "application/json"})
    assert response.status_code == 413


def test_role_of_checks_every_token() -> None:
    auth = TokenAuth("same", "other")
    assert auth.role_of("Bearer other") is Role.OPERATOR
    assert auth.role_of("Bearer same") is Role.WORKER
