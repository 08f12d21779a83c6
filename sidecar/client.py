"""HTTP client of the scheduler's sidecar API (``/v1``), with timeouts and retries.

Thread-safe (one :class:`httpx.Client` pool): the job loop, the heartbeat thread and
the executor threads share it. Network failures are retried with a short backoff and
then raised as :class:`~sidecar.errors.SchedulerUnavailableError`; 4xx answers are
mapped back onto the error tree from their problem+json body, never retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from scheduler.transfer.plan import Lease, TransferJob, TransferReport, WorkerRegistration
from sidecar.config import TOKEN_ENV
from sidecar.errors import AuthenticationError, SchedulerUnavailableError
from topology.errors import ConflictError, InputError, NotFoundError, ToposchedError

log = logging.getLogger(__name__)
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
        self._reports = ReportStream(self.base_url, timeout_s=timeout_s)
        #: Reports sent on the report stream / by POST (the stream was unavailable).
        self.reports_streamed = 0
        self.reports_posted = 0
        #: Batches of KV events sent on the report stream / by POST.
        self.events_streamed = 0
        self.events_posted = 0

    def _call(self, method: str, path: str, *, body: Any = None, timeout_s: float | None = None,
              params: dict[str, Any] | None = None, prefer_minimal: bool = False) -> Any:
        return self._send(method, path, body=body, timeout_s=timeout_s, params=params,
                          prefer_minimal=prefer_minimal)[0]

    def _send(self, method: str, path: str, *, body: Any = None, timeout_s: float | None = None,
              params: dict[str, Any] | None = None,
              prefer_minimal: bool = False) -> tuple[Any, httpx.Headers]:
        last: Exception | None = None
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        if prefer_minimal:
            headers["Prefer"] = "return=minimal"
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

    def job_stream(self, name: str, keepalive_s: float) -> Iterator[TransferJob]:
        """The job stream (``GET /v1/sidecars/NAME/jobs/stream``): jobs as the scheduler
        queues them, read on the calling thread, for as long as the stream stays open.

        Raises :class:`NotFoundError` when the worker is not registered and
        :class:`SchedulerUnavailableError` when the stream cannot be opened, breaks, or
        stays silent past ``keepalive_s`` plus the client's timeout (the scheduler
        writes an empty line every ``keepalive_s``); a stream the scheduler ended
        (lease lapsed) just stops.
        """
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        timeout = httpx.Timeout(self.timeout_s, read=keepalive_s + self.timeout_s)
        path = f"/v1/sidecars/{_segment(name)}/jobs/stream"
        try:
            with self._http.stream("GET", path, params={"keepalive_s": keepalive_s},
                                   headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    if response.status_code < 500:
                        raise _problem(response)
                    raise SchedulerUnavailableError(
                        f"GET {self.base_url}{path}: HTTP {response.status_code}")
                for line in response.iter_lines():
                    if line:
                        yield TransferJob.model_validate_json(line)
        except httpx.TransportError as exc:
            raise SchedulerUnavailableError(f"job stream {self.base_url}{path}: "
                                            f"{type(exc).__name__}: {exc}") from exc

    def report(self, report: TransferReport) -> None:
        """Send one transfer report (the scheduler answers 204: no record back)."""
        self._call("POST", f"/v1/transfers/{_segment(report.plan_id)}/report",
                   body=report.model_dump(mode="json"), prefer_minimal=True)

    def send_report(self, report: TransferReport) -> None:
        """Send one report on the report stream of its worker, else (the stream cannot
        be opened, or the scheduler ended it) with :meth:`report`."""
        if self._reports.send(report.worker, report.model_dump_json().encode(), self._token):
            self.reports_streamed += 1
        else:
            self.report(report)
            self.reports_posted += 1

    def release(self, plan_id: str, worker: str) -> None:
        """The request that used a received transfer's blocks ended on ``worker``."""
        self._call("POST", f"/v1/transfers/{_segment(plan_id)}/release",
                   body={"worker": worker})

    def send_events(self, worker: str, events: list[dict[str, Any]]) -> None:
        """Publish ``worker``'s KV events on its report stream (a JSON list on one line),
        else (the stream is unavailable) with :meth:`kv_events`."""
        if self._reports.send(worker, json.dumps(events).encode(), self._token):
            self.events_streamed += 1
        else:
            self.kv_events(events)
            self.events_posted += 1

    def kv_events(self, events: list[dict[str, Any]]) -> None:
        """Publish KV events (block_stored / block_removed …), in order, in one request."""
        self._call("POST", "/v1/kv-events", body=events)

    def close(self) -> None:
        """End the report stream, close the connection pool."""
        self._reports.close()
        self._http.close()


#: After the report stream failed, reports go by POST for this long before it is tried
#: again (a scheduler refusing it must not cost a connection per report).
REPORT_STREAM_BACKOFF_S = 5.0


class ReportStream:
    """``POST /v1/sidecars/NAME/reports/stream`` with a chunked body that stays open:
    each report is one chunk, written by the calling thread on one socket (no request,
    no answer, no thread hand-off per report).

    The scheduler answers only when the stream ends; anything it sends earlier (a
    refusal, the connection closed) shows as the socket turning readable, which is
    checked before every write: the stream is then dropped and :meth:`send` returns
    False, so that the caller sends that report another way.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        url = httpx.URL(base_url)
        self._https = url.scheme == "https"
        self._host = url.host
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.raw_path.decode().rstrip("/")
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._name: str | None = None
        self._retry_at = 0.0

    def send(self, worker: str, line: bytes, token: str | None) -> bool:
        """Write one report line; False when it could not go on the stream."""
        chunk = b"%x\r\n%s\n\r\n" % (len(line) + 1, line)
        with self._lock:
            if self._sock is not None and (self._name != worker or not self._healthy()):
                self._drop()
            if self._sock is None:
                if time.monotonic() < self._retry_at:
                    return False
                try:
                    self._open(worker, token)
                except OSError as exc:
                    log.warning("report stream: cannot open: %s", exc)
                    self._retry_at = time.monotonic() + REPORT_STREAM_BACKOFF_S
                    return False
            assert self._sock is not None
            try:
                self._sock.sendall(chunk)
            except OSError as exc:
                log.warning("report stream: write failed: %s", exc)
                self._drop()
                return False
            return True

    def _open(self, worker: str, token: str | None) -> None:
        sock = socket.create_connection((self._host, self._port), self._timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                sock = ssl.create_default_context().wrap_socket(sock,
                                                                server_hostname=self._host)
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            head = (f"POST {self._prefix}/v1/sidecars/{_segment(worker)}/reports/stream "
                    f"HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n{auth}"
                    "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
            sock.sendall(head.encode("latin-1"))
        except BaseException:
            sock.close()
            raise
        self._sock, self._name = sock, worker

    def _healthy(self) -> bool:
        """True while the scheduler has sent nothing (it answers only at the end)."""
        assert self._sock is not None
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        with contextlib.suppress(OSError):
            self._sock.settimeout(0.5)
            answer = self._sock.recv(512).split(b"\r\n", 1)[0]
            log.warning("report stream ended by the scheduler: %s",
                        answer.decode("latin-1", "replace") or "connection closed")
        self._retry_at = time.monotonic() + REPORT_STREAM_BACKOFF_S
        return False

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = self._name = None

    def close(self) -> None:
        """End the body (the scheduler answers with its counts) and close the socket."""
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.sendall(b"0\r\n\r\n")
                    self._sock.settimeout(self._timeout_s)
                    self._sock.recv(4096)
            self._drop()
