"""Engine instances: declare (operators), announce (sidecars), list with live status.

Instance names may contain ``/`` (placement instance ids such as ``h0/prefill-0``), so
the per-instance paths take the rest of the URL as the name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict

from api.engine_feeds import EngineFeeds, Source
from engines.instance import EngineInstance, parse_instances_text
from engines.live import InstanceStatus
from topology.errors import Issue, NotFoundError, ValidationError

reads = APIRouter(prefix="/v1", tags=["instances"])
writes = APIRouter(prefix="/v1", tags=["instances"])
announcements = APIRouter(prefix="/v1", tags=["instances"])
#: Largest instance document accepted in one PUT.
MAX_DOCUMENT_BYTES = 8 * 1024 * 1024


async def _feeds(request: Request) -> EngineFeeds:
    feeds: EngineFeeds = request.app.state.engine_feeds
    return feeds


Feeds = Annotated[EngineFeeds, Depends(_feeds)]


class InstanceView(BaseModel):
    """A registered instance, who registered it, and its live status."""

    model_config = ConfigDict(frozen=True)

    instance: EngineInstance
    source: Literal["operator", "sidecar"]
    status: InstanceStatus | None


class InstanceSet(BaseModel):
    """Every registered instance, and the KV-event socket bound for bind mode."""

    model_config = ConfigDict(frozen=True)

    instances: list[InstanceView]
    kv_events_bound: str | None


def _view(feeds: EngineFeeds, instance: EngineInstance) -> InstanceView:
    status = feeds.registry.status(instance.name)
    source: Source = "sidecar" if instance.name in feeds.document.announced else "operator"
    return InstanceView(instance=instance, source=source, status=status[0] if status else None)


@reads.get("/instances")
async def list_instances(feeds: Feeds) -> InstanceSet:
    """Every registered instance with its health, load figures and KV-event counters."""
    await feeds.refresh()
    return InstanceSet(instances=[_view(feeds, i) for i in feeds.document.instances],
                       kv_events_bound=feeds.registry.bound_endpoint)


@reads.get("/instances/{name:path}")
async def get_instance(name: str, feeds: Feeds) -> InstanceView:
    """One instance (404 when unknown)."""
    await feeds.refresh()
    instance = feeds.document.named(name)
    if instance is None:
        raise NotFoundError("instance", name, "GET /v1/instances lists them")
    return _view(feeds, instance)


@writes.put("/instances", status_code=200, openapi_extra={"requestBody": {
    "required": True, "content": {"application/yaml": {"schema": {"type": "string"}},
                                  "application/json": {"schema": {"type": "object"}}}}})
async def put_document(request: Request, feeds: Feeds) -> InstanceSet:
    """Replace every instance with an instance document (YAML or JSON, version 1)."""
    raw = await request.body()
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise ValidationError("PUT /v1/instances", [Issue("<document>", "is too large")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError("PUT /v1/instances",
                              [Issue("<document>", f"is not UTF-8 (byte {exc.start})")]) from exc
    document = parse_instances_text(text, "PUT /v1/instances")
    await feeds.replace(document.instances)
    return InstanceSet(instances=[_view(feeds, i) for i in feeds.document.instances],
                       kv_events_bound=feeds.registry.bound_endpoint)


def _same_name(name: str, instance: EngineInstance) -> None:
    if instance.name != name:
        raise ValidationError("instance", [Issue("name", f"{instance.name!r} does not match "
                                                         f"the path's {name!r}")])


@writes.put("/instances/{name:path}")
async def put_instance(name: str, instance: EngineInstance, feeds: Feeds,
                       response: Response) -> InstanceView:
    """Declare (or change) one instance; 201 when it is new."""
    _same_name(name, instance)
    if await feeds.put(instance, "operator"):
        response.status_code = 201
    return _view(feeds, instance)


@writes.delete("/instances/{name:path}", status_code=204)
async def delete_instance(name: str, feeds: Feeds) -> Response:
    """Deregister an instance: out of routing, its index entries and load dropped."""
    await feeds.remove(name)
    return Response(status_code=204)


@announcements.post("/instances/announce")
async def announce(instance: EngineInstance, feeds: Feeds, response: Response) -> InstanceView:
    """A sidecar announces the engine next to it (idempotent; 409 when an operator
    declared that name with other settings)."""
    if await feeds.put(instance, "sidecar"):
        response.status_code = 201
    return _view(feeds, instance)
