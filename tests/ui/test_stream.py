"""The page's event stream: against a real ``toposched serve`` (tokens, first events,
a route and a transfer arriving live), and the publisher's fan-out rules."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from api.ui.decisions import RecentDecisions
from api.ui.stream import QUEUE_FRAMES, UiFeed
from scheduler.router.router import Unschedulable
from tests.api.service_builders import worker_json
from tests.ui.service import OPERATOR_TOKEN, EventReader, Service, serve
from topology.build import build_fabric
from topology.documents import packaged_config
from topology.inventory import load_inventory

PREFILL, DECODE = "a1-r0-h00", "a1-r1-h00"  # one rail leaf apart in the example cluster


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("ui-stream")
    fabric = workdir / "fabric.json"
    build_fabric(load_inventory(packaged_config("clusters/example.yaml"))).save(fabric)
    with serve(workdir, fabric, ui_interval_s="0.1", lease_ttl_s="600") as running:
        yield running


@pytest.fixture
def events(service: Service) -> Iterator[EventReader]:
    reader = EventReader(f"{service.url}/v1/ui/events", OPERATOR_TOKEN)
    assert reader.status == 200
    yield reader
    reader.close()


@pytest.mark.process
def test_the_stream_needs_the_api_token(service: Service) -> None:
    for token in (None, "wrong"):
        reader = EventReader(f"{service.url}/v1/ui/events", token)
        assert reader.status == 401
        reader.close()


@pytest.mark.process
def test_a_page_gets_the_state_first_then_what_changes(service: Service,
                                                       events: EventReader) -> None:
    assert events.names(5) == ["hello", "decisions", "version", "placement", "traffic"]
    http = service.client()
    for name, role, host in (("p-ui", "prefill", PREFILL), ("d-ui", "decode", DECODE)):
        answer = http.post("/v1/workers", json=worker_json(name, role, [f"{host}/gpu0"]))
        assert answer.status_code == 201, answer.text
    events.next("version")  # who runs where changed: the page re-reads its zoom
    held = http.post("/v1/kv-events", json={  # p-ui holds the prompt: its KV will move
        "kind": "block_stored", "worker": "p-ui", "seq": 1, "block_hashes": [101, 102, 103, 104],
        "parent_hash": None, "model": "llama-3-70b"})
    assert held.status_code == 200, held.text
    answer = http.post("/v1/route", json={"block_hashes": [101, 102, 103, 104],
                                          "model": "llama-3-70b", "request_id": "live-1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    batch = events.next("decisions", lambda d: any(i["request_id"] == "live-1"
                                                   for i in d["items"]))
    shown = next(i for i in batch["items"] if i["request_id"] == "live-1")
    assert shown["decode"]["worker"] == body["decision"]["decode"]["worker"]
    assert body["plan_id"], "the test needs a transfer between two hosts"
    tier = body["decision"]["transfer"]["tier"]
    report = {"plan_id": body["plan_id"], "worker": body["decision"]["decode"]["worker"],
              "role": "initiator", "outcome": "ok", "bytes": 1 << 20, "duration_s": 0.002,
              "tier": tier}
    assert http.post(f"/v1/transfers/{body['plan_id']}/report", json=report).status_code == 200
    traffic = events.next("traffic", lambda t: _count(t, tier) >= 1)
    assert traffic["bytes"][tier] == 1 << 20


def _count(traffic: dict[str, Any], tier: str) -> int:
    return sum(s["count"] for s in traffic["latency"]["series"] if s["tier"] == tier)


# -- the publisher, over a stand-in for the page's state ----------------------------------

class _State:
    """What UiFeed reads, with no service behind it (a seam test)."""

    def __init__(self) -> None:
        self.decisions = RecentDecisions()
        self.boot = "b00t"
        self.version = "1.1"
        self.views = 0

    async def view(self) -> tuple[object, object, str]:
        self.views += 1
        return object(), object(), self.version

    def placement(self) -> None:
        return None

    def traffic(self) -> dict[str, int]:
        return {"links": 0}


def _feed() -> tuple[UiFeed, _State]:
    state = _State()
    return UiFeed(state, interval_s=0.01), state  # type: ignore[arg-type]


def _refusal(name: str) -> Unschedulable:
    return Unschedulable(request_id=name, policy="p", reasons=("none",))


def test_a_frame_holds_only_what_changed() -> None:
    async def run() -> None:
        feed, state = _feed()
        first = await feed.frame()
        assert b"event: version" in first and b"event: traffic" in first
        assert await feed.frame() == b""
        state.decisions.add(_refusal("r1"))
        state.version = "1.2"
        frame = await feed.frame()
        assert frame.count(b"event: ") == 2 and b'"r1"' in frame and b'"1.2"' in frame
    asyncio.run(run())


def test_every_page_gets_the_same_frames_and_no_page_means_no_tick() -> None:
    async def run() -> None:
        feed, state = _feed()
        pages = [feed.stream(), feed.stream()]
        starts = [await anext(page) for page in pages]
        assert starts[0] == starts[1] and starts[0].startswith(b"event: hello")
        state.decisions.add(_refusal("r2"))
        frames = [await anext(page) for page in pages]
        assert frames[0] == frames[1] and b'"r2"' in frames[0]
        for page in pages:
            await page.aclose()
        while feed.running:  # the publisher stops at its next tick
            await asyncio.sleep(0.01)
        ticks = state.views
        await asyncio.sleep(0.05)
        assert state.views == ticks and feed.subscribers == 0
    asyncio.run(run())


def test_a_page_that_stops_reading_is_cut_off_not_buffered() -> None:
    async def run() -> None:
        feed, state = _feed()
        stalled, live = feed.stream(), feed.stream()
        await anext(stalled)
        await anext(live)
        for i in range(QUEUE_FRAMES + 2):
            state.decisions.add(_refusal(f"r{i}"))
            await anext(live)  # the live page keeps reading; the stalled one does not
        with pytest.raises(StopAsyncIteration):
            await anext(stalled)
        assert feed.subscribers == 1
        await live.aclose()
        await feed.close()
    asyncio.run(run())
