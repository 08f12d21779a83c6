"""Announcing the engine next to the sidecar as an engine instance.

``toposched sidecar --engine-instance FILE`` reads an instance document (YAML/JSON,
version 1; ``docs/engines.md``) describing the engine(s) this sidecar sits next to and
posts each to ``POST /v1/instances/announce`` at start and every ``announce_every_s``
(so a restarted scheduler learns it again). An instance without ``gpus`` takes them
from ``CUDA_VISIBLE_DEVICES``. The worker token comes from ``TOPOSCHED_WORKER_TOKEN``
(never from the command line). Without ``--kv-blocks`` the sidecar only announces (an
engine that moves its KV itself needs no NIXL pool here).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import httpx

from engines.instance import EngineInstance, parse_instances
from topology.documents import read_document
from topology.errors import InputError

log = logging.getLogger(__name__)


def load_announcement(path: Path, environ: dict[str, str] | None = None
                      ) -> tuple[EngineInstance, ...]:
    """The instances of ``path``, GPUs filled in from ``CUDA_VISIBLE_DEVICES``."""
    env = os.environ if environ is None else environ
    data = read_document(path, "an engine instance document (version: 1, instances: [...])")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if isinstance(data, dict) and visible:
        for item in data.get("instances") or []:
            if isinstance(item, dict) and "gpus" not in item:
                item["gpus"] = visible
    return parse_instances(data, str(path)).instances


class Announcer:
    """Posts the instances now and then, until stopped."""

    def __init__(self, scheduler: str, instances: tuple[EngineInstance, ...],
                 every_s: float = 5.0, token: str | None = None) -> None:
        """``token``: the worker token (default: ``TOPOSCHED_WORKER_TOKEN``)."""
        token = token if token is not None else os.environ.get("TOPOSCHED_WORKER_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=scheduler.rstrip("/"), headers=headers, timeout=5.0)
        self.instances, self.every_s = instances, every_s
        self.stop = threading.Event()
        self.announced = 0

    def announce(self) -> None:
        """Post every instance once; a refusal (4xx) is an input error."""
        for instance in self.instances:
            answer = self._http.post("/v1/instances/announce",
                                     json=instance.model_dump(mode="json"))
            if 400 <= answer.status_code < 500:
                raise InputError(f"the scheduler refused instance {instance.name!r} "
                                 f"({answer.status_code}): {_detail(answer)}")
            answer.raise_for_status()
        self.announced += 1

    def run(self) -> None:
        """Announce until :attr:`stop` is set; scheduler outages are retried."""
        while True:
            try:
                self.announce()
            except httpx.HTTPError as exc:
                log.warning("announcing to the scheduler failed (will retry): %s", exc)
            if self.stop.wait(self.every_s):
                break
        self._http.close()


def _detail(answer: httpx.Response) -> Any:
    try:
        return answer.json().get("detail", answer.text)
    except ValueError:
        return answer.text
