"""ZMQ KV-event streams against a protocol-faithful publisher: order, gaps, replay,
restarts, the centralised bound socket, and both encodings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq.asyncio

from engines.events import EventBatch
from engines.fake import FakePublisher, stored
from engines.kv_feed import (
    CentralSubscriber,
    PublisherStream,
    ReplayClient,
    follow_publisher,
    offset_endpoint,
)

pytestmark = pytest.mark.process


@dataclass
class Sink:
    """What a stream delivered: batches (their first block's first token) and resets."""

    seen: list[int] = field(default_factory=list)
    resets: int = 0

    def apply(self, batch: EventBatch) -> None:
        for event in batch.events:
            self.seen.append(event.token_ids[0])  # type: ignore[union-attr]

    def reset(self) -> None:
        self.resets += 1


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _batch(n: int) -> list:  # type: ignore[type-arg]
    return [stored([n] * 32, 32)]


@pytest.fixture
def publishers() -> Iterator[Callable[..., FakePublisher]]:
    """Makes publishers; closes them after the test."""
    made: list[FakePublisher] = []

    def make(**options: Any) -> FakePublisher:
        made.append(FakePublisher(**options))
        return made[-1]

    yield make
    for publisher in made:
        publisher.close()


async def _following(publisher: FakePublisher,
                     body: Callable[[PublisherStream, Sink], Awaitable[None]]) -> None:
    context = zmq.asyncio.Context()
    sink = Sink()
    replay = ReplayClient(context, publisher.replay_endpoint or "", timeout_s=1.0)
    stream = PublisherStream("e0", sink.apply, sink.reset, replay)
    task = asyncio.create_task(follow_publisher(context, publisher.endpoint, "", stream))
    try:
        await body(stream, sink)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        context.term()


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_history_from_before_subscribing_and_later_batches_arrive_in_order(
        encoding: str, publishers: Callable[..., FakePublisher]) -> None:
    publisher = publishers(encoding=encoding)
    publisher.publish(_batch(0))
    publisher.publish(_batch(1))

    async def body(stream: PublisherStream, sink: Sink) -> None:
        await _until(lambda: sink.seen == [0, 1], "history replayed")
        for n in range(2, 40):
            publisher.publish(_batch(n))
        await _until(lambda: len(sink.seen) == 40, "all batches")
        assert sink.seen == list(range(40)) and sink.resets == 0
        assert stream.stats.last_seq == 39

    asyncio.run(_following(publisher, body))


def test_a_gap_is_filled_from_the_replay_endpoint(
        publishers: Callable[..., FakePublisher]) -> None:
    publisher = publishers()

    async def body(stream: PublisherStream, sink: Sink) -> None:
        publisher.publish(_batch(0))
        await _until(lambda: sink.seen == [0], "first batch")
        publisher.publish(_batch(1), send=False)  # lost on the wire, kept for replay
        publisher.publish(_batch(2), send=False)
        publisher.publish(_batch(3))
        await _until(lambda: len(sink.seen) == 4, "gap filled")
        assert sink.seen == [0, 1, 2, 3] and sink.resets == 0
        assert stream.stats.gaps >= 1 and stream.stats.replayed_batches >= 2

    asyncio.run(_following(publisher, body))


def test_a_gap_the_replay_cannot_fill_drops_the_engines_entries(
        publishers: Callable[..., FakePublisher]) -> None:
    publisher = publishers()

    async def body(stream: PublisherStream, sink: Sink) -> None:
        publisher.publish(_batch(0))
        await _until(lambda: sink.seen == [0], "first batch")
        publisher.publish(_batch(1), send=False)
        publisher.forget_before(2)  # aged out of the engine's replay buffer
        publisher.publish(_batch(2))
        await _until(lambda: 2 in sink.seen, "batch after the gap")
        assert sink.resets == 1 and stream.stats.lost_batches == 1
        assert 1 not in sink.seen

    asyncio.run(_following(publisher, body))


def test_a_restarted_publisher_is_followed_from_its_new_start(
        publishers: Callable[..., FakePublisher]) -> None:
    publisher = publishers()

    async def body(stream: PublisherStream, sink: Sink) -> None:
        for n in range(3):
            publisher.publish(_batch(n))
        await _until(lambda: len(sink.seen) == 3, "first life")
        publisher.restart()
        publisher.publish(_batch(100))
        publisher.publish(_batch(101))
        await _until(lambda: sink.seen[-2:] == [100, 101], "second life")
        assert stream.stats.restarts == 1 and sink.resets == 1

    asyncio.run(_following(publisher, body))


def test_centralised_mode_binds_once_and_dispatches_by_topic() -> None:
    async def main() -> None:
        context = zmq.asyncio.Context()
        central = CentralSubscriber(context, "tcp://127.0.0.1:0")
        sinks = {name: Sink() for name in ("a", "b")}
        task = asyncio.create_task(central.run())
        await _until(lambda: central.bound is not None, "bound")
        publishers = {}
        for name, sink in sinks.items():
            pub = FakePublisher(endpoint=central.bound or "", connect=True, topic=f"kv@{name}",
                                encoding="array" if name == "a" else "map")
            publishers[name] = pub
            replay = ReplayClient(context, pub.replay_endpoint or "", timeout_s=1.0)
            central.streams[f"kv@{name}".encode()] = PublisherStream(name, sink.apply,
                                                                     sink.reset, replay)
        try:
            await _until(lambda: _published(publishers, sinks), "both engines' batches")
            assert sinks["a"].seen[:3] == [0, 1, 2] and sinks["b"].seen[:3] == [0, 1, 2]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for pub in publishers.values():
                pub.close()
            context.term()

    asyncio.run(main())


def _published(publishers: dict[str, FakePublisher], sinks: dict[str, Sink]) -> bool:
    """Publish the next batch on every engine; True once each sink holds 3 in order
    (a connecting publisher's first messages may be lost: replay fills them in)."""
    for name, pub in publishers.items():
        if len(sinks[name].seen) < 3:
            pub.publish(_batch(pub.next_seq))
    return all(len(sink.seen) >= 3 for sink in sinks.values())


def test_data_parallel_ranks_publish_on_offset_ports() -> None:
    assert offset_endpoint("tcp://10.0.0.5:5557", 0) == "tcp://10.0.0.5:5557"
    assert offset_endpoint("tcp://10.0.0.5:5557", 3) == "tcp://10.0.0.5:5560"
