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
from collections import Counter, deque
from collections.abc import Iterator, Sequence
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
        #: Releases (a received transfer's request ended) sent on the stream / by POST.
        self.releases_streamed = 0
        self.releases_posted = 0

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

    def job_stream(self, name: str, keepalive_s: float,
                   counts: Counter[str] | None = None) -> JobStream:
        """The job stream (``GET /v1/sidecars/NAME/jobs/stream``): jobs as the scheduler
        queues them, read on the calling thread, for as long as the stream stays open
        (see :class:`JobStream`; opened at the first ``next``). ``counts``: jobs by kind
        and ``writes`` (the scheduler's writes that carried jobs) are added to it."""
        return JobStream(self.base_url, f"/v1/sidecars/{_segment(name)}/jobs/stream",
                         keepalive_s, self.timeout_s, self._token, counts)

    def drain(self, name: str) -> int:
        """Tell the scheduler this worker is draining: it hands it no new transfer from
        now on (its pending ones go on). Returns the epoch that is draining."""
        data = self._call("POST", f"/v1/sidecars/{_segment(name)}/drain")
        return int(data["epoch"])

    def pending(self, name: str, created_before: float | None = None) -> int:
        """How many transfers with worker ``name`` on either side are still pending
        (only those created before the unix time ``created_before``, if given)."""
        params = {} if created_before is None else {"created_before": created_before}
        data = self._call("GET", f"/v1/sidecars/{_segment(name)}/pending", params=params)
        return int(data["pending"])

    def report(self, report: TransferReport) -> None:
        """Send one transfer report (the scheduler answers 204: no record back)."""
        self._call("POST", f"/v1/transfers/{_segment(report.plan_id)}/report",
                   body=report.model_dump(mode="json"), prefer_minimal=True)

    def send_report(self, report: TransferReport,
                    events: list[dict[str, Any]] | None = None) -> None:
        """Send one report on the report stream of its worker, and ``events`` (KV events
        of its worker) behind it in the same write; else (the stream cannot be opened,
        or the scheduler ended it) with :meth:`report` and :meth:`kv_events`."""
        more = [json.dumps(events).encode()] if events else []
        if self._reports.send(report.worker, report.model_dump_json().encode(), self._token,
                              more):
            self.reports_streamed += 1
            self.events_streamed += bool(events)
            return
        try:
            self.report(report)
            self.reports_posted += 1
        finally:
            if events:
                self.kv_events(events)
                self.events_posted += 1

    def release(self, plan_id: str, worker: str) -> None:
        """The request that used a received transfer's blocks ended on ``worker``."""
        self._call("POST", f"/v1/transfers/{_segment(plan_id)}/release",
                   body={"worker": worker})

    def send_release(self, plan_id: str, worker: str) -> None:
        """:meth:`release` as a line of ``worker``'s report stream
        (``{"release": PLAN_ID}``), else (the stream is unavailable) by POST."""
        if self._reports.send(worker, json.dumps({"release": plan_id}).encode(), self._token):
            self.releases_streamed += 1
        else:
            self.release(plan_id, worker)
            self.releases_posted += 1

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


class JobStream:
    """An open job stream: iterate for its jobs; :meth:`ready` says whether the next one
    (or a keep-alive line) can be read without waiting.

    Iterating raises :class:`NotFoundError` when the worker is not registered and
    :class:`SchedulerUnavailableError` when the stream cannot be opened, breaks, or
    stays silent past ``keepalive_s`` plus the client's timeout (the scheduler writes an
    empty line every ``keepalive_s``); a stream the scheduler ended (lease lapsed) just
    stops. The socket closes when the stream ends or fails, or on :meth:`close`.

    Read straight off one socket (:class:`_Socket`), not through the HTTP client: each
    job is one chunk of the answer, and its parsing and the job's model are all the
    work between the scheduler's write and the job's start.
    """

    def __init__(self, base_url: str, path: str, keepalive_s: float, timeout_s: float,
                 token: str | None, counts: Counter[str] | None = None) -> None:
        self._base_url, self._path, self._token = base_url, path, token
        self._counts: Counter[str] = Counter() if counts is None else counts
        self._keepalive_s, self._timeout_s = keepalive_s, timeout_s
        self._sock: _Socket | None = None
        self._body: Iterator[bytes] | None = None
        self._lines: deque[bytes] = deque()
        self._pending = b""

    def __iter__(self) -> JobStream:
        return self

    def __enter__(self) -> JobStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> TransferJob:
        try:
            return self._next()
        except (OSError, _Broken) as exc:
            self.close()
            raise SchedulerUnavailableError(f"job stream {self._base_url}{self._path}: "
                                            f"{type(exc).__name__}: {exc}") from exc
        except BaseException:  # the end of the stream (StopIteration) included
            self.close()
            raise

    def _next(self) -> TransferJob:
        body = self._body if self._body is not None else self._open()
        while True:
            while self._lines:
                line = self._lines.popleft()
                if line.strip():
                    job = TransferJob.model_validate_json(line)
                    self._counts[job.kind] += 1
                    return job
            chunk = next(body)
            *lines, self._pending = (self._pending + chunk).split(b"\n")
            self._lines.extend(lines)
            if chunk.strip():
                self._counts["writes"] += 1

    def _open(self) -> Iterator[bytes]:
        where = f"{self._base_url}{self._path}"
        self._sock = sock = _Socket.open(self._base_url, self._timeout_s)
        sock.request("GET", f"{self._path}?keepalive_s={self._keepalive_s!r}", self._token)
        sock.settimeout(self._keepalive_s + self._timeout_s)
        status, headers = sock.head()
        if status >= 400:
            raise _refusal(where, status, headers, b"".join(sock.body(headers)))
        self._body = sock.body(headers)
        return self._body

    def ready(self) -> bool:
        """True when a line is already here: read, or waiting on the socket."""
        if self._lines:
            return True
        return self._sock is not None and self._sock.readable()

    def close(self) -> None:
        """Close the stream's socket (iterating again reopens nothing: it has ended)."""
        if self._sock is not None:
            self._sock.__exit__()
        self._body = iter(())


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
        self._url = url = httpx.URL(base_url)
        self._host = url.host
        self._prefix = url.raw_path.decode().rstrip("/")
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._name: str | None = None
        self._retry_at = 0.0

    def send(self, worker: str, line: bytes, token: str | None,
             more: Sequence[bytes] = ()) -> bool:
        """Write one line (and ``more`` lines behind it, in the same write: the
        scheduler wakes once); False when they could not go on the stream."""
        chunk = b"".join(b"%x\r\n%s\n\r\n" % (len(item) + 1, item) for item in (line, *more))
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
        sock, port = _connect(self._url, self._timeout_s)
        try:
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            head = (f"POST {self._prefix}/v1/sidecars/{_segment(worker)}/reports/stream "
                    f"HTTP/1.1\r\nHost: {self._host}:{port}\r\n{auth}"
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


def _connect(url: httpx.URL, timeout_s: float) -> tuple[socket.socket, int]:
    """A socket to the scheduler at ``url`` (TLS for https), Nagle off; and its port."""
    https = url.scheme == "https"
    port = url.port or (443 if https else 80)
    sock = socket.create_connection((url.host, port), timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if https:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.host)
    except BaseException:
        sock.close()
        raise
    return sock, port


class _Broken(Exception):
    """The scheduler's answer is not the HTTP/1.1 this client reads."""


def _refusal(where: str, status: int, headers: dict[str, str], body: bytes) -> Exception:
    """The error for a refused stream: the problem's error below 500, else unavailable."""
    if status >= 500:
        return SchedulerUnavailableError(f"GET {where}: HTTP {status}")
    request = httpx.Request("GET", where)
    return _problem(httpx.Response(status, headers=headers, content=body, request=request))


#: Largest answer head (status line and headers) read before giving up.
_MAX_HEAD = 65_536


class _Socket:
    """One HTTP/1.1 exchange on a socket of its own, read by hand: a request written in
    one go, the answer's head parsed, its body (chunked or of a length) yielded as it
    arrives."""

    def __init__(self, sock: socket.socket, host: str, port: int, prefix: str) -> None:
        self._sock, self._host, self._port, self._prefix = sock, host, port, prefix
        self._buffer = b""

    @classmethod
    def open(cls, base_url: str, timeout_s: float) -> _Socket:
        """Connect to the scheduler at ``base_url`` (see :func:`_connect`)."""
        url = httpx.URL(base_url)
        sock, port = _connect(url, timeout_s)
        return cls(sock, url.host, port, url.raw_path.decode().rstrip("/"))

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def settimeout(self, seconds: float) -> None:
        """Time limit of each read from now on."""
        self._sock.settimeout(seconds)

    def readable(self) -> bool:
        """True when bytes of the answer are buffered or can be read without waiting."""
        if self._buffer:
            return True
        try:
            return bool(select.select([self._sock], [], [], 0)[0])
        except (OSError, ValueError):  # closed: the next read says why
            return True

    def request(self, method: str, target: str, token: str | None) -> None:
        """Write the request head (``target``: path and query under the base URL)."""
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (f"{method} {self._prefix}{target} HTTP/1.1\r\nHost: {self._host}:"
                f"{self._port}\r\n{auth}\r\n")
        self._sock.sendall(head.encode("latin-1"))

    def _more(self) -> None:
        data = self._sock.recv(65_536)
        if not data:
            raise _Broken("the scheduler closed the connection mid-answer")
        self._buffer += data

    def _take_line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > _MAX_HEAD:
                raise _Broken("answer line too long")
            self._more()
        line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
        return line

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._more()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _chunk_size(self) -> int:
        line = self._take_line()
        try:
            return int(line.split(b";", 1)[0], 16)
        except ValueError:
            raise _Broken(f"not a chunk size: {line[:40]!r}") from None

    def head(self) -> tuple[int, dict[str, str]]:
        """The answer's status and headers (names lowercased)."""
        parts = self._take_line().split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _Broken(f"not an HTTP/1.1 status line: {parts!r}"[:200])
        headers: dict[str, str] = {}
        while line := self._take_line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def body(self, headers: dict[str, str]) -> Iterator[bytes]:
        """The answer's body as it arrives: chunk by chunk, else up to its length, else
        until the connection closes."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := self._chunk_size():
                data = self._take(size)
                self._take(2)  # the CRLF after the chunk: nothing of it is left to read
                yield data
            while self._take_line():  # trailers, up to the empty line
                pass
        elif "content-length" in headers:
            yield self._take(int(headers["content-length"]))
        else:
            yield self._buffer
            self._buffer = b""
            while data := self._sock.recv(65_536):
                yield data
