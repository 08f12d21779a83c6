"""Following engines' KV-event publishers over ZMQ: ordering, gaps, replay, restarts.

Two ways to receive (``kv_events.mode`` of an instance):

* ``connect`` — :func:`follow_publisher` connects a SUB socket to the engine's bound
  PUB endpoint (one task per engine and data-parallel rank; vLLM offsets the port by
  the rank);
* ``bind`` ("centralised") — :class:`CentralSubscriber` binds one SUB socket that the
  engines' publishers connect to and tells their messages apart by topic.

Either way each publisher's messages go through its own :class:`PublisherStream`,
which applies batches strictly in sequence order:

* the next sequence number: applied;
* a jump ahead (messages lost, e.g. past the high-water mark): the missing batches are
  fetched from the engine's replay ROUTER (send the 8-byte start sequence, receive
  ``(topic, seq, payload)`` frames, then sequence -1) and applied first; if the replay
  cannot supply all of them the instance's entries are dropped (``on_reset``) before
  going on, so the index only ever under-reports (safe: the engine recomputes);
* the same batch (same number, same bytes) already applied through a replay: a
  duplicate, skipped;
* any other number at or below the last applied one: the publisher restarted (its
  numbering starts again at 0): entries dropped, history fetched again.

On start (and after :meth:`PublisherStream.reset`) the stream asks the replay endpoint
for everything from 0, so an engine that cached blocks before toposched subscribed is
indexed without waiting for its next event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from engines.events import (
    END_OF_REPLAY,
    EventBatch,
    EventDecodeError,
    decode_batch,
    decode_seq,
    encode_seq,
)

log = logging.getLogger(__name__)
#: Messages a SUB socket queues before dropping (vLLM's publisher uses 100,000 too).
RECEIVE_HWM = 100_000
#: Seconds to wait for each replay answer frame.
REPLAY_TIMEOUT_S = 2.0


class ReplayError(Exception):
    """The replay endpoint did not answer in time or answered something else."""


@dataclass
class StreamStats:
    """Counters of one publisher stream (monotonic, except ``last_*``)."""

    batches: int = 0
    events: int = 0
    skipped_events: int = 0
    duplicates: int = 0
    gaps: int = 0
    replayed_batches: int = 0
    lost_batches: int = 0
    restarts: int = 0
    replay_failures: int = 0
    malformed: int = 0
    last_seq: int | None = None
    last_batch_ts: float | None = None
    #: Monotonic time of the last applied batch (None: none yet).
    last_received: float | None = None


@dataclass
class ReplayClient:
    """Asks one engine's replay ROUTER for the batches from a sequence number on."""

    context: zmq.asyncio.Context
    endpoint: str
    timeout_s: float = REPLAY_TIMEOUT_S

    async def fetch(self, start: int) -> list[tuple[int, bytes]]:
        """``(seq, payload)`` pairs from ``start`` on, ascending, until the end marker."""
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(self.endpoint)
            await socket.send_multipart([b"", encode_seq(start)])
            return await self._answers(socket)
        finally:
            socket.close()

    async def _answers(self, socket: zmq.asyncio.Socket) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        while True:
            try:
                frames = await asyncio.wait_for(socket.recv_multipart(), self.timeout_s)
            except TimeoutError as exc:
                raise ReplayError(f"no replay answer from {self.endpoint} within "
                                  f"{self.timeout_s} s") from exc
            # [b"", topic, seq, payload] (vLLM) or [b"", seq, payload] (older publishers)
            body = frames[1:] if frames and frames[0] == b"" else frames
            if len(body) not in (2, 3):
                raise ReplayError(f"replay answer of {len(frames)} frames")
            seq = decode_seq(body[-2])
            if seq == END_OF_REPLAY:
                return found
            found.append((seq, body[-1]))


Apply = Callable[[EventBatch], None]
Reset = Callable[[], None]


@dataclass
class PublisherStream:
    """Sequence state of one publisher; feeds its batches to ``apply`` in order."""

    name: str
    apply: Apply
    on_reset: Reset
    replay: ReplayClient | None = None
    clock: Callable[[], float] = time.monotonic
    stats: StreamStats = field(default_factory=StreamStats)
    #: Highest sequence number seen on the PUB socket.
    _published: int | None = None
    #: Highest sequence number applied (from PUB or replay).
    _applied: int | None = None
    #: Batches applied from a replay that the PUB socket may still deliver: seq → digest.
    _replayed: dict[int, int] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def reset(self) -> None:
        """Forget the sequence state (the engine went away): the next message, or
        :meth:`catch_up`, starts from the engine's history again."""
        self._published = self._applied = None
        self._replayed.clear()

    async def catch_up(self) -> None:
        """Apply everything the engine's replay buffer still holds (no-op without one)."""
        async with self._lock:
            if self.replay is None or self._applied is not None:
                return
            try:
                batches = await self.replay.fetch(0)
            except (ReplayError, EventDecodeError, zmq.ZMQError) as exc:
                log.info("no KV-event history from %s yet: %s", self.name, exc)
                return
            for seq, payload in batches:
                self._apply(seq, payload, replayed=True)

    async def receive(self, frames: list[bytes]) -> None:
        """Handle one ``[topic, seq, payload]`` message from the PUB socket."""
        async with self._lock:
            try:
                seq = decode_seq(frames[1]) if len(frames) == 3 else None
            except EventDecodeError:
                seq = None
            if seq is None:
                self.stats.malformed += 1
                return
            await self._receive(seq, frames[2])

    async def _receive(self, seq: int, payload: bytes) -> None:
        if self._is_duplicate(seq, payload):
            self.stats.duplicates += 1
            return
        if self._applied is not None and seq <= self._applied:
            self._restarted(seq)
        self._published = seq
        applied = self._applied
        if applied is None and seq > 0:
            await self._fill(0, seq, history=True)
        elif applied is not None and seq > applied + 1:
            self.stats.gaps += 1
            await self._fill(applied + 1, seq, history=False)
        self._apply(seq, payload, replayed=False)

    def _is_duplicate(self, seq: int, payload: bytes) -> bool:
        """Whether the PUB socket delivers a batch already applied from a replay (the same
        bytes under the same number); anything else at or below the applied number means
        the publisher started counting again."""
        digest = self._replayed.get(seq)
        for old in [s for s in self._replayed if s <= seq]:
            del self._replayed[old]  # PUB delivers in order: these can no longer come
        return digest is not None and digest == hash(payload)

    def _restarted(self, seq: int) -> None:
        log.warning("KV-event publisher %s restarted (seq %d after %s)", self.name, seq,
                    self._published)
        self.stats.restarts += 1
        self._applied = None
        self._replayed.clear()
        self.on_reset()

    async def _fill(self, start: int, end: int, *, history: bool) -> None:
        """Replay ``[start, end)`` and apply it; on a hole, reset and apply what follows."""
        batches: list[tuple[int, bytes]] = []
        if self.replay is not None:
            try:
                batches = [(s, p) for s, p in await self.replay.fetch(start) if s < end]
            except (ReplayError, EventDecodeError, zmq.ZMQError) as exc:
                self.stats.replay_failures += 1
                log.warning("KV-event replay from %s failed: %s", self.name, exc)
        expected = start
        for seq, payload in batches:
            if seq > expected:
                self._lost(seq - expected, history)
            if seq >= expected:
                self._apply(seq, payload, replayed=True)
                expected = seq + 1
        if expected < end:
            self._lost(end - expected, history)

    def _lost(self, count: int, history: bool) -> None:
        """``count`` batches cannot be had: what the index holds for this publisher may
        be wrong, so it is dropped (history never seen is not a loss)."""
        if history and self._applied is None:
            return
        self.stats.lost_batches += count
        self.on_reset()

    def _apply(self, seq: int, payload: bytes, *, replayed: bool) -> None:
        self._applied = seq if self._applied is None else max(self._applied, seq)
        if replayed and (self._published is None or seq > self._published):
            self._replayed[seq] = hash(payload)
        self.stats.last_seq = self._applied
        try:
            batch = decode_batch(payload)
        except EventDecodeError as exc:
            log.warning("undecodable KV-event batch %d from %s: %s", seq, self.name, exc)
            self.stats.malformed += 1
            self.stats.lost_batches += 1
            self.on_reset()
            return
        stats = self.stats
        stats.batches += 1
        stats.replayed_batches += replayed
        stats.events += len(batch.events)
        stats.skipped_events += batch.skipped
        stats.last_batch_ts, stats.last_received = batch.ts, self.clock()
        self.apply(batch)


def offset_endpoint(endpoint: str, rank: int) -> str:
    """vLLM's per-rank endpoint: the TCP port plus the data-parallel rank."""
    if rank == 0 or not endpoint.startswith("tcp://"):
        return endpoint if rank == 0 else f"{endpoint}_dp{rank}"
    base, _, port = endpoint.rpartition(":")
    return f"{base}:{int(port) + rank}"


def subscriber(context: zmq.asyncio.Context, topic: str) -> zmq.asyncio.Socket:
    """A SUB socket for ``topic`` ('' = every topic) with a deep receive queue."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
    return socket


async def follow_publisher(context: zmq.asyncio.Context, endpoint: str, topic: str,
                           stream: PublisherStream,
                           started: Callable[[], Awaitable[None]] | None = None) -> None:
    """Connect to a bound publisher and feed ``stream`` until cancelled."""
    socket = subscriber(context, topic)
    socket.connect(endpoint)
    try:
        if started is not None:
            await started()
        await stream.catch_up()
        wanted = topic.encode()
        while True:
            frames = await socket.recv_multipart()
            if not wanted or frames[0] == wanted:  # ZMQ matches topics by prefix
                await stream.receive(frames)
    finally:
        socket.close()


@dataclass
class CentralSubscriber:
    """One bound SUB socket for every engine in ``bind`` mode, dispatching by topic."""

    context: zmq.asyncio.Context
    endpoint: str
    streams: dict[bytes, PublisherStream] = field(default_factory=dict)
    unknown_topics: int = 0
    bound: str | None = None

    async def run(self) -> None:
        """Bind and dispatch until cancelled."""
        socket = subscriber(self.context, "")
        socket.bind(self.endpoint)
        self.bound = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        try:
            while True:
                frames = await socket.recv_multipart()
                stream = self.streams.get(frames[0]) if frames else None
                if stream is None:
                    self.unknown_topics += 1
                    continue
                await stream.receive(frames)
        finally:
            socket.close()
