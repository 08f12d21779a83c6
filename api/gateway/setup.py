"""Building the gateway into an app from its settings, and its start and stop."""

from __future__ import annotations

from fastapi import FastAPI

from api.gateway.relay import Gateway
from api.gateway.tokens import LocalTokenizer, Tokens
from api.security import TokenAuth
from api.settings import Settings
from engines.pd.http import EngineHttp


def install_gateway(app: FastAPI, settings: Settings) -> Gateway:
    """Put a :class:`Gateway` on ``app.state.gateway``, which the OpenAI endpoints
    (:mod:`api.routers.openai`, mounted first by :func:`api.app.create_app`) serve with.

    The engines it routes to are the service's registered instances (``--instances``
    seeds them, the instance API changes them: :mod:`api.engine_feeds`)."""
    client = EngineHttp(connect_timeout_s=settings.engine_connect_timeout_s,
                        read_timeout_s=settings.engine_read_timeout_s)
    key = settings.engine_api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    local = LocalTokenizer(settings.tokenizer) if settings.tokenizer else None
    gateway = Gateway(app.state.runtime, app.state.services, app.state.engine_feeds,
                      Tokens(client, local, headers), client,
                      min_uncached_tokens=settings.pd_min_uncached_tokens,
                      lease_s=settings.kv_lease_s,
                      reservation_ttl_s=settings.reservation_ttl_s, engine_headers=headers,
                      pull_overhead_s=settings.pull_overhead_s)
    app.state.gateway = gateway
    client_token = settings.client_token
    app.state.client_auth = TokenAuth(
        client_token.get_secret_value() if client_token else None,
        settings.operator_token.get_secret_value()
        if client_token and settings.operator_token else None)
    return gateway


async def start_gateway(gateway: Gateway) -> None:
    """Ask every instance for its /health once before serving (an instance is out of
    routing until it has answered)."""
    await gateway.registry.scrape_all()


async def stop_gateway(gateway: Gateway) -> None:
    """Close the engine connections."""
    await gateway.legs.aclose()
