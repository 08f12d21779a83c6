"""Posting a host's collected captures to a running scheduler (``topo collect --post``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

#: ``topo collect`` result name → feed path under /v1/topology/hosts/{host}/.
FEED_PATHS = {"nvidia-smi": "nvidia-smi", "lldp": "lldp", "nccl": "nccl"}


def post_captures(url: str, host: str, results: Mapping[str, Mapping[str, Any]],
                  token: str | None = None, *, timeout_s: float = 30.0,
                  transport: httpx.BaseTransport | None = None) -> dict[str, dict[str, Any]]:
    """PUT every successful capture of ``results`` to the scheduler at ``url``.

    Returns, per capture, ``{"status": HTTP status, "body": parsed JSON}``; a capture
    that was not collected is skipped. Network failures raise ``httpx.HTTPError``.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answers: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=timeout_s,
                      transport=transport) as client:
        for name, result in results.items():
            feed = FEED_PATHS.get(name)
            if feed is None or not result.get("ok"):
                continue
            response = client.put(f"/v1/topology/hosts/{quote(host, safe='')}/{feed}",
                                  content=str(result["output"]).encode(),
                                  headers={"Content-Type": "text/plain"})
            answers[name] = {"status": response.status_code, "body": _json(response)}
    return answers


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
