"""Server-sent events for the operator's page: one publisher, every page a subscriber.

While at least one page is connected, :class:`UiFeed` builds one frame per tick —
the routing results added since the last tick (the newest ``DECISIONS_PER_TICK``), the
traffic panels when they changed, the placement when it changed, and the view version
when the fabric or who-runs-where changed (the page then re-reads the zoom it shows) —
and hands the same bytes to every subscriber. The work per tick does not grow with
the number of pages, and with no page connected there is no tick at all.

A new subscriber is woken at once with a snapshot built by the same tick as the frame
the others get (``hello``, the newest decisions, then the version, placement and
traffic events last built), so it never sees state older than what follows; decisions
carry sequence numbers so the page drops any it already has.
A subscriber that falls ``QUEUE_FRAMES`` frames behind is cut off (its stream ends and
the page reconnects to a fresh snapshot) rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic_core import to_json

from api.ui.decisions import decision_view
from api.ui.state import UiState
from scheduler.background import stop_tasks

log = logging.getLogger(__name__)
#: Routing results sent per tick (the rest are counted as skipped).
DECISIONS_PER_TICK = 50
#: Routing results in a new page's snapshot.
DECISIONS_IN_SNAPSHOT = 100
#: Frames a subscriber may fall behind before it is cut off.
QUEUE_FRAMES = 32
#: A comment line keeps idle connections (and proxies) open.
HEARTBEAT_S = 15.0
#: Tells a subscriber's stream to end.
_END = b""


def event(name: str, data: Any) -> bytes:
    """One SSE event; non-finite numbers become null (JSON has none)."""
    return b"event: " + name.encode() + b"\ndata: " + to_json(data, inf_nan_mode="null") + b"\n\n"


class UiFeed:
    """Builds each frame once and gives it to every connected page."""

    def __init__(self, ui: UiState, interval_s: float) -> None:
        self.ui = ui
        self.interval_s = interval_s
        self._subscribers: set[asyncio.Queue[bytes]] = set()
        #: Subscribers waiting for their snapshot (sent by the next tick, at once).
        self._fresh: set[asyncio.Queue[bytes]] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._cursor = ui.decisions.added
        self._sent: dict[str, bytes] = {}

    @property
    def running(self) -> bool:
        """Whether the publisher is ticking (only while a page is connected)."""
        return self._task is not None and not self._task.done()

    @property
    def subscribers(self) -> int:
        """Pages connected now."""
        return len(self._subscribers) + len(self._fresh)

    async def stream(self) -> AsyncIterator[bytes]:
        """One page's stream: a snapshot, then the shared frames, heartbeats between."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_FRAMES)
        self._fresh.add(queue)
        if self._task is None or self._task.done():
            self._cursor = self.ui.decisions.added
            self._sent.clear()
            self._wake = asyncio.Event()  # bound to the running loop on first use
            self._task = asyncio.get_running_loop().create_task(self._run(self._wake))
        else:
            assert self._wake is not None
            self._wake.set()
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    frame = b": keep-alive\n\n"
                if frame is _END:
                    return
                yield frame
        finally:
            self._fresh.discard(queue)
            self._subscribers.discard(queue)

    async def close(self) -> None:
        """End every stream and the publisher (app shutdown)."""
        for queue in [*self._subscribers, *self._fresh]:
            self._cut(queue)
        if self._task is not None:
            await stop_tasks([self._task])

    async def _run(self, wake: asyncio.Event) -> None:
        while self._subscribers or self._fresh:
            wake.clear()
            try:
                frame = await self.frame()
                snapshot = self.snapshot() if self._fresh else b""
            except Exception:  # one bad tick must not end every page's stream
                log.exception("building the page's frame failed")
                frame = snapshot = b""
            if frame:
                for queue in list(self._subscribers):
                    self._offer(queue, frame)
            if snapshot:
                for queue in list(self._fresh):
                    self._fresh.discard(queue)
                    self._subscribers.add(queue)
                    self._offer(queue, snapshot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval_s)

    def _offer(self, queue: asyncio.Queue[bytes], frame: bytes) -> None:
        try:
            queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("a page fell %d frames behind; ending its stream", QUEUE_FRAMES)
            self._cut(queue)

    def _cut(self, queue: asyncio.Queue[bytes]) -> None:
        self._subscribers.discard(queue)
        self._fresh.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_END)

    async def frame(self) -> bytes:
        """What changed since the last tick, as SSE events (empty: nothing did)."""
        ui, parts = self.ui, []
        items, skipped = ui.decisions.newest(self._cursor, DECISIONS_PER_TICK)
        self._cursor = ui.decisions.added
        if items or skipped:
            parts.append(event("decisions", {"items": [decision_view(*item) for item in items],
                                             "skipped": skipped}))
        view = await ui.view()
        parts += self._changed("version", view[2] if view else None)
        parts += self._changed("placement", ui.placement())
        parts += self._changed("traffic", ui.traffic())
        return b"".join(parts)

    def snapshot(self) -> bytes:
        """A new page's start, as of the frame just built: the newest decisions, then the
        version, placement and traffic last built."""
        items, skipped = self.ui.decisions.newest(0, DECISIONS_IN_SNAPSHOT)
        hello = event("hello", {"interval_s": self.interval_s, "boot": self.ui.boot,
                                "decisions_kept": len(self.ui.decisions)})
        decisions = event("decisions", {"items": [decision_view(*item) for item in items],
                                        "skipped": skipped})
        return hello + decisions + b"".join(self._sent[name] for name in
                                            ("version", "placement", "traffic"))

    def _changed(self, name: str, data: Any) -> list[bytes]:
        encoded = event(name, data)
        if self._sent.get(name) == encoded:
            return []
        self._sent[name] = encoded
        return [encoded]
