"""The gateway's engine client keeps no cookies and sends none."""

from __future__ import annotations

import asyncio

import httpx

from api.gateway.setup import EngineClient


def test_a_cookie_an_engine_sets_never_rides_on_later_requests() -> None:
    sent: list[str | None] = []

    def engine(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=one-client; Path=/"})

    async def two_requests() -> httpx.Cookies:
        async with EngineClient(transport=httpx.MockTransport(engine)) as client:
            for _ in range(2):
                (await client.post("http://engine/v1/completions", content=b"{}")
                 ).raise_for_status()
            return client.cookies

    cookies = asyncio.run(two_requests())
    assert sent == [None, None]
    assert not cookies and list(cookies.jar) == []
