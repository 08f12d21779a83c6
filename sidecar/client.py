"""HTTP client of the scheduler's sidecar API (``/v1``), with timeouts and retries.

Thread-safe (one :class:`httpx.Client` pool): the job loop, the heartbeat thread and
the executor threads share it. Network failures are retried with a short backoff and
then raised as :class:`~sidecar.errors.SchedulerUnavailableError`; 4xx answers are
mapped back onto the error tree from their problem+json body, never retried.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx

from scheduler.transfer.plan import Lease, TransferJob, TransferReport, WorkerRegistration
from sidecar.config import TOKEN_ENV
from sidecar.errors import AuthenticationError, SchedulerUnavailableError
from topology.errors import ConflictError, InputError, NotFoundError, ToposchedError

#: The registration answer's header with the worker's own token (see ``api.security``).
WORKER_TOKEN_HEADER = "X-Worker-Token"


def _segment(name: str) -> str:
    """``name`` as one URL path segment: worker names may hold ``/`` (placement instance
    ids are ``prefill-HOST/gpuN``), which must not split the path."""
    return quote(name, safe="")


def _problem(response: httpx.Response) -> ToposchedError:
    try:
        body = response.json()
        detail = str(body.get("detail") or body.get("title") or response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 404:
        return NotFoundError("resource", response.request.url.path, detail)
    if response.status_code == 409:
        return ConflictError(detail)
    if response.status_code in (401, 403):
        return AuthenticationError(f"scheduler answered {response.status_code}: {detail} "
                                   f"(give the sidecar the worker token: ${TOKEN_ENV} or "
                                   "--token-file)")
    return InputError(f"scheduler answered {response.status_code}: {detail}")


class SchedulerClient:
    """Calls the scheduler on behalf of one sidecar."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0, retries: int = 3,
                 backoff_s: float = 0.2, transport: httpx.BaseTransport | None = None,
                 token: str | None = None) -> None:
        """A client of ``base_url``; ``token``: the scheduler's worker token (None: the
        scheduler runs without authentication)."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                  transport=transport)
        self._token = token

    def _call(self, method: str, path: str, *, body: Any = None, timeout_s: float | None = None,
              params: dict[str, Any] | None = None) -> Any:
        return self._send(method, path, body=body, timeout_s=timeout_s, params=params)[0]

    def _send(self, method: str, path: str, *, body: Any = None, timeout_s: float | None = None,
              params: dict[str, Any] | None = None) -> tuple[Any, httpx.Headers]:
        last: Exception | None = None
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, json=body, params=params,
                                              timeout=timeout_s or self.timeout_s,
                                              headers=headers)
            except httpx.TransportError as exc:
                last = exc
            else:
                if response.status_code < 400:
                    return (response.json() if response.content else None), response.headers
                if response.status_code < 500:
                    raise _problem(response)
                last = RuntimeError(f"HTTP {response.status_code}")
            if attempt < self.retries:
                time.sleep(self.backoff_s * (2 ** attempt))
        raise SchedulerUnavailableError(f"{method} {self.base_url}{path} failed after "
                                        f"{self.retries + 1} tries: {last}") from last

    def register(self, reg: WorkerRegistration) -> Lease:
        """Register this worker; returns its lease.

        With authentication on, the answer carries this worker's own token
        (``X-Worker-Token``): every later call uses it, and it may act on this worker only.
        """
        data, headers = self._send("POST", "/v1/workers", body=reg.model_dump(mode="json"))
        own = headers.get(WORKER_TOKEN_HEADER)
        if own:
            self._token = own
        return Lease.model_validate(data)

    def heartbeat(self, name: str) -> Lease:
        """Renew the lease."""
        return Lease.model_validate(self._call("POST",
                                               f"/v1/workers/{_segment(name)}/heartbeat"))

    def deregister(self, name: str) -> None:
        """Remove this worker (its metadata is no longer handed out)."""
        self._call("DELETE", f"/v1/workers/{_segment(name)}")

    def poll_jobs(self, name: str, wait_s: float) -> list[TransferJob]:
        """Long-poll for jobs: returns at the first job or after ``wait_s``."""
        data = self._call("GET", f"/v1/sidecars/{_segment(name)}/jobs", params={"wait_s": wait_s},
                          timeout_s=wait_s + self.timeout_s)
        return [TransferJob.model_validate(job) for job in data["jobs"]]

    def report(self, report: TransferReport) -> None:
        """Send one transfer report."""
        self._call("POST", f"/v1/transfers/{_segment(report.plan_id)}/report",
                   body=report.model_dump(mode="json"))

    def release(self, plan_id: str, worker: str) -> None:
        """The request that used a received transfer's blocks ended on ``worker``."""
        self._call("POST", f"/v1/transfers/{_segment(plan_id)}/release",
                   body={"worker": worker})

    def kv_events(self, events: list[dict[str, Any]]) -> None:
        """Publish KV events (block_stored / block_removed …), in order, in one request."""
        self._call("POST", "/v1/kv-events", body=events)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
