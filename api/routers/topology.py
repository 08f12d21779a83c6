"""Topology: the inventory and per-host capture feeds in; the fabric, drawings and
distances out. Every feed rebuilds the fabric in place and says what changed; the feeds
and the fabric are shared with the other replicas (see :mod:`api.service`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from api.feeds import (
    FabricChange,
    FeedConflict,
    FeedKind,
    Feeds,
    parse_aws_feed,
    parse_capture,
    parse_ibnetdiscover_feed,
    parse_inventory,
    parse_k8s,
)
from api.problems import problem
from api.routing import Fabric
from api.service import Services
from topology.draw import to_svg
from topology.errors import Location, ParseError
from topology.source import MAX_CAPTURE_BYTES, decode_capture
from topology.spec import FabricSpec
from topology.summary import FabricSummary, summarize

reads = APIRouter(prefix="/v1/topology", tags=["topology"])
writes = APIRouter(prefix="/v1/topology", tags=["topology"])


def _fabric(services: Services) -> Fabric:
    return services.require_fabric()


CurrentFabric = Annotated[Fabric, Depends(_fabric)]


def _text_body(media: str, example: str) -> dict[str, Any]:
    """A capture sent as it is: text of ``media`` (the raw file, not a JSON string)."""
    return {"requestBody": {"required": True, "content": {
        media: {"schema": {"type": "string"}, "example": example}}}}


def _json_body(example: Any, *, text: str | None = None) -> dict[str, Any]:
    """A capture that is a JSON document: the document itself (an object, never a quoted
    string), or with ``text`` also its text form (``text/plain``)."""
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"},
                                                    "example": example}}
    if text is not None:
        content["text/plain"] = {"schema": {"type": "string"}, "example": text}
    return {"requestBody": {"required": True, "content": content}}


async def _read_text(request: Request, source: str) -> str:
    raw = await request.body()
    if len(raw) > MAX_CAPTURE_BYTES:
        raise ParseError(f"body is larger than {MAX_CAPTURE_BYTES // (1024 * 1024)} MiB",
                         Location(source))
    return decode_capture(raw, source)


class FeedResult(BaseModel):
    """What one feed changed; ``replan_job`` names a re-solve the change started."""

    model_config = ConfigDict(frozen=True)
    host: str | None
    kind: str
    fabric_loaded: bool
    change: FabricChange
    replan_job: str | None = None


async def _apply(services: Services, request: Request, host: str | None, kind: str,
                 edit: Any) -> FeedResult | Response:
    try:
        change, job = await services.update_feeds(edit)
    except FeedConflict as exc:
        return problem(409, exc.title, str(exc), request.url.path,
                       conflicts=list(exc.conflicts))
    return FeedResult(host=host, kind=kind, fabric_loaded=services.fabric is not None,
                      change=change, replan_job=job)


async def _host_feed(services: Services, request: Request, host: str,
                     kind: FeedKind) -> FeedResult | Response:
    source = f"{request.method} {request.url.path}"
    text = await _read_text(request, source)
    # parse off the event loop (captures may be megabytes), unless it is a re-post
    capture = None if services.feeds.same_as_posted(host, kind, text) else (
        await asyncio.to_thread(parse_capture, kind, text, source))

    def edit(feeds: Feeds) -> Feeds | None:
        if feeds.same_as_posted(host, kind, text):
            return None
        # another post may have replaced the copy this one matched; parse it after all
        return feeds.with_capture(host, kind, capture or parse_capture(kind, text, source))

    return await _apply(services, request, host, kind, edit)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"description": "the inputs conflict (problem+json with `conflicts`)"},
    422: {"description": "the body does not parse (problem+json)"}}


@writes.put("/inventory", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_text_body("application/yaml", "version: 1\nzones: []\n"))
async def put_inventory(request: Request, services: Services) -> FeedResult | Response:
    """Load an inventory (YAML or JSON); capture paths are refused (post feeds instead)."""
    source = "PUT /v1/topology/inventory"
    text = await _read_text(request, source)
    inventory = parse_inventory(text, source)

    def edit(feeds: Feeds) -> Feeds:
        return feeds.with_inventory(inventory, text)

    return await _apply(services, request, None, "inventory", edit)


@writes.put("/hosts/{host}/nvidia-smi", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_text_body("text/plain", "\tGPU0\tGPU1\nGPU0\t X \tNV18\n"))
async def put_nvidia_smi(host: str, request: Request,
                         services: Services) -> FeedResult | Response:
    """A host's ``nvidia-smi topo -m`` capture."""
    return await _host_feed(services, request, host, "nvsmi")


@writes.put("/hosts/{host}/lldp", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_json_body({"lldp": []}, text="lldp.ens1np0.chassis.name=leaf1\n"))
async def put_lldp(host: str, request: Request, services: Services) -> FeedResult | Response:
    """A host's ``lldpctl -f json0`` / ``-f json`` / ``-f keyvalue`` capture."""
    return await _host_feed(services, request, host, "lldp")


@writes.put("/hosts/{host}/nccl", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_text_body("application/xml", "<system version=\"1\"></system>"))
async def put_nccl(host: str, request: Request, services: Services) -> FeedResult | Response:
    """A host's NCCL topology dump (``NCCL_TOPO_DUMP_FILE``)."""
    return await _host_feed(services, request, host, "nccl")


@writes.put("/k8s-nodes", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_json_body({"items": []}))
async def put_k8s_nodes(request: Request, services: Services) -> FeedResult | Response:
    """The cluster's nodes (``kubectl get nodes -o json|yaml``): zones, cliques, GPUs."""
    source = "PUT /v1/topology/k8s-nodes"
    text = await _read_text(request, source)
    capture = parse_k8s(text, source)

    def edit(feeds: Feeds) -> Feeds | None:
        if feeds.k8s is not None and feeds.k8s.text == text:
            return None
        return feeds.with_k8s(capture)

    return await _apply(services, request, None, "k8s-nodes", edit)


@writes.put("/hosts/{host}/rdma", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_text_body("text/plain", "mlx5_0 port 1 ==> ens1np0 (Up)\n"))
async def put_rdma(host: str, request: Request, services: Services) -> FeedResult | Response:
    """A host's RDMA devices: ``topo collect``'s JSON, ``rdma link show``, ``ibdev2netdev``
    or ``ibstat`` output (device → interface map, GUIDs)."""
    return await _host_feed(services, request, host, "rdma")


async def _cluster_feed(services: Services, request: Request, kind: str, name: str | None,
                        parse: Any, held: Any, replace: Any) -> FeedResult | Response:
    """A cluster-wide capture: parsed off the event loop, swapped into the feeds."""
    source = f"{request.method} {request.url.path}"
    text = await _read_text(request, source)
    capture = await asyncio.to_thread(parse, text, source)

    def edit(feeds: Feeds) -> Feeds | None:
        current = held(feeds)
        return None if current is not None and current.text == text else replace(feeds, capture)

    return await _apply(services, request, name, kind, edit)


@writes.put("/ibnetdiscover/{name}", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_text_body("text/plain", 'Switch\t41 "S-08c0eb03008cc87c"\t\t# '
                                     '"MF0;leaf-1:MQM8700/U1" enhanced port 0 lid 3 lmc 0\n'))
async def put_ibnetdiscover(name: Annotated[str, Path(max_length=128)], request: Request,
                            services: Services) -> FeedResult | Response:
    """An InfiniBand subnet as ``ibnetdiscover`` (or ``-p``) or ``iblinkinfo`` (or ``-l``)
    prints it, the form detected; ``name`` tells
    subnets (or the hosts that captured them) apart, and each replaces its own."""
    return await _cluster_feed(
        services, request, "ibnetdiscover", name, parse_ibnetdiscover_feed,
        lambda feeds: feeds.ib.get(name), lambda feeds, c: feeds.with_ib(name, c))


@writes.put("/aws-instance-topology", response_model=FeedResult, responses=_RESPONSES,
            openapi_extra=_text_body("application/json", '{"Instances": []}'))
async def put_aws_topology(request: Request, services: Services) -> FeedResult | Response:
    """``aws ec2 describe-instance-topology`` output: instances under network nodes."""
    return await _cluster_feed(
        services, request, "aws-instance-topology", None, parse_aws_feed,
        lambda feeds: feeds.aws, lambda feeds, c: feeds.with_aws(c))


@reads.get("/fabric")
async def get_fabric(fabric: CurrentFabric) -> FabricSpec:
    """The fabric in force."""
    return fabric.spec


@reads.get("/fabric.svg", response_class=Response,
           responses={200: {"content": {"image/svg+xml": {}}}})
async def get_fabric_svg(fabric: CurrentFabric) -> Response:
    """A drawing of the fabric."""
    return Response(to_svg(fabric.spec), media_type="image/svg+xml")


@reads.get("/summary")
async def get_summary(fabric: CurrentFabric) -> FabricSummary:
    """Counts, rails and NVLink domains of the fabric."""
    return summarize(fabric.spec)


class DistanceAnswer(BaseModel):
    """The cost of moving bytes from GPU ``a`` to GPU ``b``."""

    model_config = ConfigDict(frozen=True)
    a: str
    b: str
    tier: str
    hops: int
    latency_us: float
    bandwidth_gb_per_s: float
    bytes: int
    transfer_time_s: float
    links: tuple[str, ...]


@reads.get("/distance")
async def get_distance(fabric: CurrentFabric, a: Annotated[str, Query(max_length=512)],
                       b: Annotated[str, Query(max_length=512)],
                       nbytes: Annotated[int, Query(alias="bytes", ge=0, le=1 << 50)] = 0,
                       ) -> DistanceAnswer:
    """Tier, latency, bandwidth and transfer time between two GPUs (404 if unknown)."""
    cost = fabric.distance.pair(a, b)
    return DistanceAnswer(a=cost.a, b=cost.b, tier=cost.tier.label, hops=cost.hops,
                          latency_us=cost.latency_us,
                          bandwidth_gb_per_s=cost.bandwidth_gb_per_s, bytes=nbytes,
                          transfer_time_s=cost.transfer_time_s(nbytes),
                          links=fabric.distance.path_links(cost.a, cost.b))
