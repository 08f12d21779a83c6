"""Bearer tokens with two roles, constant-time checks, body size limits."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.cli.main import run
from api.security import (
    WORKER_TOKEN_HEADER,
    AuthError,
    BodyLimit,
    Role,
    TokenAuth,
    auth_error_handler,
    is_loopback,
    require,
)
from tests.api.service_builders import (
    OPERATOR,
    WORKER,
    bearer,
    make_app,
    own_bearer,
    worker_json,
)


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


# -- the service's own app: authentication before bodies, workers kept to themselves ----

def _service() -> TestClient:
    return TestClient(make_app())


@pytest.mark.parametrize("path", ["/v1/workers", "/v1/route", "/v1/kv-events",
                                  "/v1/transfers"])
def test_garbage_without_a_token_is_401_not_a_parse_error(path: str) -> None:
    with _service() as client:
        answer = client.post(path, content=b"{not json at all\xff",
                             headers={"Content-Type": "application/json"})
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["connection"] == "close"  # the unread body ends the connection


def test_probes_and_docs_stay_open_with_authentication_on() -> None:
    with _service() as client:
        for path in ("/healthz", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 200, path


def _register(client: TestClient, name: str, token: str = WORKER) -> str:
    answer = client.post("/v1/workers", json=worker_json(name, "decode", []),
                         headers=bearer(token))
    assert answer.status_code == 201, answer.text
    own: str = answer.headers[WORKER_TOKEN_HEADER]
    assert own not in (WORKER, OPERATOR)
    return own


def test_a_worker_token_acts_on_its_own_worker_only() -> None:
    with _service() as client:
        a_token, b_token = _register(client, "a-worker"), _register(client, "b-worker")
        assert a_token == own_bearer("a-worker")["Authorization"].split()[1]
        for token in (a_token, WORKER):  # b's peer, and the shared worker token
            for method, path in (("DELETE", "/v1/workers/b-worker"),
                                 ("POST", "/v1/workers/b-worker/heartbeat"),
                                 ("GET", "/v1/sidecars/b-worker/jobs?wait_s=0")):
                denied = client.request(method, path, headers=bearer(token))
                assert denied.status_code == 403, (token, path, denied.text)
                assert denied.headers["content-type"] == "application/problem+json"
        events = [{"kind": "block_stored", "worker": "b-worker", "seq": 1,
                   "block_hashes": [1]}]
        assert client.post("/v1/kv-events", json=events,
                           headers=bearer(a_token)).status_code == 403
        stolen = client.post("/v1/workers", json=worker_json("b-worker", "decode", []),
                             headers=bearer(a_token))
        assert stolen.status_code == 403
        assert client.post("/v1/workers/a-worker/heartbeat",
                           headers=bearer(a_token)).status_code == 200
        assert client.delete("/v1/workers/b-worker", headers=bearer(b_token)).status_code == 204
        assert client.delete("/v1/workers/a-worker", headers=bearer()).status_code == 204
        names = [w["registration"]["name"] for w in
                 client.get("/v1/workers", headers=bearer(WORKER)).json()]
        assert names == []


def test_any_worker_credential_may_read_load_and_release_reservations() -> None:
    with _service() as client:
        _register(client, "a-worker")
        for token in (WORKER, own_bearer("b-worker")["Authorization"].split()[1]):
            load = client.get("/v1/workers/a-worker/load", headers=bearer(token))
            assert load.status_code == 200, load.text
            # the reservation id is the capability: no owner check (releasing is idempotent)
            release = client.post("/v1/reservations/no-such-id/release", headers=bearer(token))
            assert release.status_code == 200, release.text


def test_forged_or_foreign_own_tokens_are_401() -> None:
    other = TokenAuth("another-shared-token", None).worker_token("a-worker")
    assert other is not None
    tampered = own_bearer("a-worker")["Authorization"].split()[1][:-2] + "AA"
    with _service() as client:
        for token in (other, tampered, "tsw1.!!.??"):
            answer = client.post("/v1/workers/a-worker/heartbeat", headers=bearer(token))
            assert answer.status_code == 401, token


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("127.attacker.example", False),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("localhost.example", False)])
def test_is_loopback_believes_ip_literals_and_localhost_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_non_loopback_name_without_tokens(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for variable in ("TOPOSCHED_WORKER_TOKEN", "TOPOSCHED_OPERATOR_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    assert run(["serve", "--host", "127.attacker.example"]) == 2
    assert "refusing to bind 127.attacker.example" in capsys.readouterr().err
