"""Posting a host's collected captures to a running scheduler (``topo collect --post``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

#: ``topo collect`` result name → feed path (``{host}``: the host posting).
FEED_PATHS = {"nvidia-smi": "/v1/topology/hosts/{host}/nvidia-smi",
              "lldp": "/v1/topology/hosts/{host}/lldp",
              "nccl": "/v1/topology/hosts/{host}/nccl",
              "rdma-devices": "/v1/topology/hosts/{host}/rdma",
              "ibnetdiscover": "/v1/topology/ibnetdiscover/{host}"}


def post_captures(url: str, host: str, results: Mapping[str, Mapping[str, Any]],
                  token: str | None = None, *, timeout_s: float = 30.0,
                  transport: httpx.BaseTransport | None = None) -> dict[str, dict[str, Any]]:
    """PUT every successful capture of ``results`` to the scheduler at ``url`` (host
    captures under the host; an ibnetdiscover capture as the subnet this host sees).

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
            response = client.put(feed.format(host=quote(host, safe="")),
                                  content=str(result["output"]).encode(),
                                  headers={"Content-Type": "text/plain"})
            answers[name] = {"status": response.status_code, "body": _json(response)}
    return answers


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
