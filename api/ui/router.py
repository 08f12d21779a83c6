"""The operator's page at ``/ui``: its files, its reads under ``/v1/ui``, its event stream.

The page's files (HTML, CSS, JavaScript, an icon) ship inside the package and are
served from memory; they hold no data, so they load without a token, under a Content
Security Policy that allows nothing but this origin (no CDN, works offline). Every
read of data — the zooms, the placement, the traffic, the decisions and the event
stream — takes the same bearer token as the rest of ``/v1`` (worker or operator role),
sent by the page in the ``Authorization`` header; the page keeps the token in the
tab's ``sessionStorage``, never in a URL or a cookie. Nothing here writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.security import Role, require
from api.settings import Settings
from api.ui.decisions import decision_view
from api.ui.fabric_view import FabricIndex, Occupancy, host_detail, overview, pod_detail
from api.ui.models import HostDetail, Overview, PodDetail
from api.ui.state import UiState
from api.ui.stream import UiFeed
from scheduler.background import stop_tasks
from topology.errors import NotFoundError

log = logging.getLogger(__name__)
#: The page's files and their media types (nothing else under /ui is served).
FILES = {"index.html": "text/html; charset=utf-8", "app.css": "text/css; charset=utf-8",
         "app.js": "text/javascript; charset=utf-8", "fabric.js": "text/javascript; charset=utf-8",
         "panels.js": "text/javascript; charset=utf-8",
         "util.js": "text/javascript; charset=utf-8", "icon.svg": "image/svg+xml"}
#: Only this origin; no inline script, no frames, no form posts.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: How often the page's view of the placement is refreshed with no page open (so that
#: "what the last change moved" compares consecutive placements).
PLACEMENT_WATCH_S = 1.0
Name = Annotated[str, Path(min_length=1, max_length=256)]

pages = APIRouter(include_in_schema=False)
reads = APIRouter(prefix="/v1/ui", tags=["ui"])


class StaticFile:
    """One of the page's files, read from the package once."""

    def __init__(self, name: str) -> None:
        self.body = resources.files("api.ui").joinpath("static", name).read_bytes()
        self.media_type = FILES[name]
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    def response(self, request: Request) -> Response:
        """The file, or 304 when the browser holds this version."""
        headers = {"ETag": self.etag, "Cache-Control": "no-cache",
                   "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


@pages.get("/ui")
async def page(request: Request) -> Response:
    """The operator's page."""
    files: dict[str, StaticFile] = request.app.state.ui_files
    return files["index.html"].response(request)


@pages.get("/ui/{name}")
async def page_file(name: str, request: Request) -> Response:
    """One of the page's files (404 for anything else)."""
    files: dict[str, StaticFile] = request.app.state.ui_files
    found = files.get(name)
    if found is None:
        raise NotFoundError("page file", name)
    return found.response(request)


def _ui(request: Request) -> UiState:
    ui: UiState = request.app.state.ui
    return ui


async def _view(request: Request) -> tuple[FabricIndex, Occupancy, str]:
    view = await _ui(request).view()
    if view is None:
        raise NotFoundError("fabric", "current", "PUT /v1/topology/inventory first")
    return view


@reads.get("/overview", response_model=Overview)
async def get_overview(request: Request) -> Response:
    """The whole fabric at cluster zoom: one tile per host with GPUs per role."""
    index, occupancy, version = await _view(request)
    cache: dict[str, bytes] = request.app.state.ui_overview
    body = cache.get(version)
    if body is None:
        built = await asyncio.to_thread(overview, index, occupancy, version)
        body = built.model_dump_json().encode()
        cache.clear()
        cache[version] = body
    return Response(body, media_type="application/json")


@reads.get("/pods/{pod}")
async def get_pod(pod: Name, request: Request) -> PodDetail:
    """One pod at GPU level, with its instances, workers and pairings."""
    index, occupancy, version = await _view(request)
    return pod_detail(index, occupancy, pod, version)


@reads.get("/hosts/{host}")
async def get_host(host: Name, request: Request) -> HostDetail:
    """One host in full: GPUs and what runs on them, NICs, links, NVLink domain."""
    index, occupancy, version = await _view(request)
    return host_detail(index, occupancy, host, version)


@reads.get("/decisions")
async def get_decisions(request: Request,
                        after: Annotated[int, Query(ge=0, le=1 << 62)] = 0,
                        limit: Annotated[int, Query(ge=1, le=256)] = 100) -> dict[str, Any]:
    """The newest routing results (numbered; ``after`` skips those already seen)."""
    items, skipped = _ui(request).decisions.newest(after, limit)
    return {"items": [decision_view(*item) for item in items], "skipped": skipped}


@reads.get("/placement")
async def get_placement(request: Request) -> dict[str, Any] | None:
    """The placement in force and what its last change moved (null before the first)."""
    ui = _ui(request)
    await ui.observe_placement()
    return ui.placement()


@reads.get("/traffic")
async def get_traffic(request: Request) -> dict[str, Any]:
    """KV bytes in flight per shared link, latency histograms by tier and domain pair,
    transfers and bytes by tier, drift alerts."""
    return _ui(request).traffic()


@reads.get("/events", include_in_schema=False)
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: what changed, once per tick (see :mod:`api.ui.stream`)."""
    feed: UiFeed = request.app.state.ui_feed
    return StreamingResponse(feed.stream(), media_type="text/event-stream", headers={
        "Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def install_ui(app: FastAPI, settings: Settings) -> None:
    """Mount the page and its reads (after the API's routes: ``/v1/route`` stays first)."""
    ui = UiState(app.state.services, app.state.runtime, app.state.coordinator.store,
                 app.state.runtime.decisions)
    app.state.ui = ui
    app.state.ui_feed = UiFeed(ui, settings.ui_interval_s)
    app.state.ui_overview = {}
    app.state.ui_files = {name: StaticFile(name) for name in FILES}
    app.include_router(pages)
    app.include_router(reads, dependencies=[require(Role.WORKER)])
    _watch_placement(app, ui, app.state.ui_feed)


def _watch_placement(app: FastAPI, ui: UiState, feed: UiFeed) -> None:
    """Run the placement watcher for the app's lifetime, and end the streams at shutdown,
    around whatever lifespan the app already has."""
    inner: Callable[[Any], Any] = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            task = asyncio.get_running_loop().create_task(_watch(ui))
            try:
                yield state
            finally:
                await stop_tasks([task])
                await feed.close()

    app.router.lifespan_context = lifespan


async def _watch(ui: UiState) -> None:
    while True:
        await asyncio.sleep(PLACEMENT_WATCH_S)
        try:
            await ui.observe_placement()
        except Exception:  # the watcher must outlive one bad read
            log.exception("watching the placement for the page failed")
