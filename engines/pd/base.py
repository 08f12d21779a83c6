"""What every engine kind's P/D protocol provides, and what its legs report.

A *protocol* runs one OpenAI request through a (prefill, decode) pair of engines of
its kind (vLLM's NixlConnector pull, SGLang's bootstrap rooms, …) or through one engine
alone, and hands back the decode engine's answer unread, so the gateway can stream it
to the client without buffering. The gateway never looks inside the legs: a new engine
kind is one new module in this package exposing ``PROTOCOL`` (see
:func:`engines.pd.protocol_for`).

Errors: an engine that cannot be reached (refused connection, reset, timeout) raises
:class:`EngineUnreachableError` naming it, so the gateway can take it out of routing and
try another pair; anything the engines *answer* (2xx, 4xx, 5xx) comes back as an
:class:`UpstreamAnswer`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from engines.pd.http import Answer, EngineHttp
from topology.errors import ToposchedError

#: Header carrying the request id shared by both legs (vLLM uses it as its request id).
REQUEST_ID_HEADER = "X-Request-Id"


class EngineEndpoint(Protocol):
    """What the legs need to know about one engine instance (an ``EngineInstance``)."""

    @property
    def name(self) -> str:
        """The instance's name (a worker name in routing)."""

    @property
    def base_url(self) -> str:
        """Its OpenAI base URL, e.g. ``http://10.0.0.5:8000`` (no ``/v1``)."""

    @property
    def host(self) -> str:
        """The host it runs on (SGLang's ``bootstrap_host``)."""

    @property
    def role(self) -> str:
        """``prefill``, ``decode`` or ``both``."""


class EngineUnreachableError(ToposchedError):
    """An engine did not answer (refused, reset, timed out): it is out of routing."""

    title = "engine unreachable"

    def __init__(self, engine: str, leg: str, detail: str) -> None:
        self.engine, self.leg, self.detail = engine, leg, detail
        super().__init__(f"{leg} leg: engine {engine} unreachable: {detail}")


@dataclass(frozen=True)
class PrefixCopy:
    """A cached prefix the prefill engine copies from the engine holding it before its
    prefill leg (the router's ``Decision.pull``): ``token_ids`` are the prompt's first
    ``blocks`` whole KV blocks, all of which the holder has cached."""

    holder: EngineEndpoint
    token_ids: tuple[int, ...]
    blocks: int


@dataclass(frozen=True)
class LegPlan:
    """One client request to run: where, what, and through which engines.

    ``prefill`` None means decode-only (the decode engine computes the prompt itself).
    ``body`` is the client's parsed JSON body; protocols never change it in place.
    """

    path: str
    body: Mapping[str, Any]
    request_id: str
    decode: EngineEndpoint
    prefill: EngineEndpoint | None = None
    #: How long the prefill engine keeps a finished request's KV for the decode engine.
    lease_s: float = 30.0
    #: Headers sent on every leg (e.g. an engine API key).
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Called once, just before a leg that makes the decode engine take the prefill's
    #: KV is sent (the caller labels the decode engine's next KV transfer with it).
    on_handoff: Callable[[], None] | None = None
    #: A prefix to copy to ``prefill`` before its leg (None: none; protocols without
    #: :attr:`PdProtocol.runs_pulls` ignore it).
    pull: PrefixCopy | None = None

    def handoff(self) -> None:
        """Tell the caller the KV is about to move (see :attr:`on_handoff`)."""
        if self.on_handoff is not None:
            self.on_handoff()

    def url(self, engine: EngineEndpoint) -> str:
        """The request's URL on ``engine``."""
        return engine.base_url.rstrip("/") + self.path

    def leg_headers(self) -> dict[str, str]:
        """Headers of either leg: the shared request id and the configured extras."""
        return {**self.headers, REQUEST_ID_HEADER: self.request_id}


@dataclass
class Timeline:
    """When each step of one request happened (``time.perf_counter`` seconds)."""

    started: float = field(default_factory=time.perf_counter)
    prefill_sent: float | None = None
    prefill_done: float | None = None
    decode_sent: float | None = None
    first_byte: float | None = None
    done: float | None = None
    #: Why the request left the planned path (e.g. a prefill 5xx → decode-only).
    fallback: str | None = None
    #: Whether the decode leg carried KV from the prefill engine.
    disaggregated: bool = False
    #: Engines found unreachable on the way (the request went on without them).
    unreachable: list[str] = field(default_factory=list)
    #: The prefix copy before the prefill leg: sent, answered, and how it went (None:
    #: none was planned; ``ok``; ``failed``, why in :attr:`pull_failure`).
    pull_sent: float | None = None
    pull_done: float | None = None
    pull_outcome: str | None = None
    pull_failure: str | None = None

    @staticmethod
    def now() -> float:
        """The clock the stamps use."""
        return time.perf_counter()

    def span(self, start: float | None, end: float | None) -> float | None:
        """Seconds from ``start`` to ``end`` (None when either is missing)."""
        return None if start is None or end is None else max(end - start, 0.0)

    @property
    def prefill_s(self) -> float | None:
        """Prefill leg: sent to answered."""
        return self.span(self.prefill_sent, self.prefill_done)

    @property
    def handoff_s(self) -> float | None:
        """Handoff gap: prefill answered to decode leg sent."""
        return self.span(self.prefill_done, self.decode_sent)

    @property
    def pull_s(self) -> float | None:
        """Prefix copy: its first leg sent to its last answered."""
        return self.span(self.pull_sent, self.pull_done)

    @property
    def decode_ttft_s(self) -> float | None:
        """Decode leg sent to its first body byte."""
        return self.span(self.decode_sent, self.first_byte)


class UpstreamAnswer:
    """The decode engine's (or a failed prefill's) answer, body not yet read.

    Iterate :meth:`chunks` to stream it; :meth:`aclose` ends every leg still open (the
    decode stream, a concurrent prefill leg) and is safe to call twice.
    """

    def __init__(self, response: Answer, timeline: Timeline,
                 companions: tuple[Any, ...] = ()) -> None:
        self.response = response
        self.timeline = timeline
        self._companions = companions  # asyncio tasks of other legs still running
        self._closed = False

    @property
    def status_code(self) -> int:
        """The engine's HTTP status."""
        return self.response.status_code

    @property
    def media_type(self) -> str | None:
        """The engine's content type."""
        found: str | None = self.response.headers.get("content-type")
        return found

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (raw bytes: SSE frames pass through untouched); an
        answer already read whole (a prefill's refusal) is its decoded content."""
        if self.response.is_consumed:
            self.timeline.first_byte = self.timeline.first_byte or Timeline.now()
            yield self.response.content
            self.timeline.done = Timeline.now()
            return
        async for chunk in self.response.chunks():
            if self.timeline.first_byte is None and chunk:
                self.timeline.first_byte = Timeline.now()
            yield chunk
        self.timeline.done = Timeline.now()

    async def read_some(self) -> tuple[bytes, bool]:
        """The body bytes that have arrived (waiting until some do), and whether the body
        ended with them: what :meth:`chunks` yields, with the end known at the last
        piece (so a relay can send that piece and the end in one write)."""
        timeline = self.timeline
        if self.response.is_consumed:
            data, last = self.response.content, True
        else:
            data, last = await self.response.read_some()
        if timeline.first_byte is None and (data or self.response.is_consumed):
            timeline.first_byte = Timeline.now()
        if last:
            timeline.done = Timeline.now()
        return data, last

    async def aclose(self) -> None:
        """Close the decode stream and cancel any leg still running."""
        if self._closed:
            return
        self._closed = True
        for task in self._companions:
            task.cancel()
        await self.response.aclose()


class PdProtocol(Protocol):
    """The P/D protocol of one engine kind."""

    kind: str
    #: Whether :meth:`open` runs a plan's :attr:`LegPlan.pull` (a prefix copy).
    runs_pulls: bool

    async def open(self, client: EngineHttp, plan: LegPlan,
                   timeline: Timeline) -> UpstreamAnswer:
        """Run ``plan``'s legs up to the decode answer's headers; the body stays unread."""

    def can_serve_alone(self, engine: EngineEndpoint) -> bool:
        """Whether ``engine`` can run a request without a prefill engine (decode-only)."""

    def incompatibility(self, prefill: Any, decode: Any) -> str | None:
        """Why ``prefill`` cannot hand KV to ``decode`` (None: they can)."""
