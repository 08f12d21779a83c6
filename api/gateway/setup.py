"""Building the gateway into an app from its settings, and its start and stop."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from api.gateway.instances import InstancePool
from api.gateway.relay import Gateway
from api.gateway.tokens import LocalTokenizer, Tokens
from api.load import DEFAULT_MAX_REQUESTS, DEFAULT_MAX_TOKENS
from api.security import TokenAuth
from api.settings import Settings
from engines.instance import load_instances

#: Idle keep-alive connections kept per engine.
KEEPALIVE = 64


def install_gateway(app: FastAPI, settings: Settings) -> Gateway:
    """Mount the OpenAI endpoints and put a :class:`Gateway` on ``app.state.gateway``."""
    from api.routers import openai

    instances = load_instances(settings.instances).instances if settings.instances else ()
    pool = InstancePool(instances, quarantine_s=settings.engine_quarantine_s)
    timeout = httpx.Timeout(settings.engine_read_timeout_s,
                            connect=settings.engine_connect_timeout_s)
    client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(
        max_connections=None, max_keepalive_connections=KEEPALIVE))
    key = settings.engine_api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    local = LocalTokenizer(settings.tokenizer) if settings.tokenizer else None
    gateway = Gateway(app.state.runtime, app.state.services, pool,
                      Tokens(client, local, headers), client,
                      min_uncached_tokens=settings.pd_min_uncached_tokens,
                      lease_s=settings.kv_lease_s,
                      reservation_ttl_s=settings.reservation_ttl_s, engine_headers=headers,
                      engines=getattr(app.state, "engine_feeds", None))
    app.state.gateway = gateway
    client_token = settings.client_token
    app.state.client_auth = TokenAuth(
        client_token.get_secret_value() if client_token else None,
        settings.operator_token.get_secret_value()
        if client_token and settings.operator_token else None)
    app.include_router(openai.router)
    return gateway


async def start_gateway(gateway: Gateway) -> None:
    """Give every instance a load capacity (the store refuses reservations otherwise)."""
    for instance in gateway.pool.all():
        await gateway.runtime.loads.set_capacity(
            instance.name, DEFAULT_MAX_TOKENS, instance.max_requests or DEFAULT_MAX_REQUESTS)


async def stop_gateway(gateway: Gateway) -> None:
    """Close the engine connections."""
    await gateway.client.aclose()
