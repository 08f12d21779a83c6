"""One OpenAI request through the gateway, end to end.

parse → token ids → route (pair, conditional disaggregation, a prefix copy) → reserve
load → the engine kind's legs (:mod:`engines.pd`) → stream the decode answer back byte
for byte → release load → record the phases by tier. An engine that cannot be reached
is taken out of routing in the engine registry (until its /health answers again) and
the request is routed again without it (up to :data:`MAX_ATTEMPTS` routes); a client
that leaves cancels every leg still running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.decide import decide
from api.engine_feeds import EngineFeeds
from api.gateway.decide import LOCAL, PairChooser, Route, prefix_copy
from api.gateway.load import Held, output_limit
from api.gateway.pull_cost import PullOverhead
from api.gateway.tokens import PromptTokens, Tokens
from api.runtime import Runtime
from api.service import ServiceState
from api.snapshots import LiveSnapshots
from engines.pd import (
    EngineUnreachableError,
    LegPlan,
    PrefixCopy,
    Timeline,
    UpstreamAnswer,
    protocol_for,
)
from engines.pd.http import EngineHttp, TransportError, loads
from scheduler.router.router import RouteRequest, Unschedulable
from scheduler.telemetry.handoff import Handoff
from topology.errors import Issue, NotFoundError, UnschedulableError, ValidationError

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Routes tried for one request before giving up (each try goes without the engines
#: found unreachable by the ones before: the registry took them out of routing).
MAX_ATTEMPTS = 3
#: Status sent (to the log and metrics; the client is gone) for a cancelled request.
CLIENT_CLOSED = 499


class ClientGoneError(Exception):
    """The client closed the connection before the answer started."""


class Gateway:
    """The gateway's shared parts: the engine registry it routes to, tokenizer, pair
    chooser, engine client."""

    def __init__(self, runtime: Runtime, services: ServiceState, feeds: EngineFeeds,
                 tokens: Tokens, legs: EngineHttp, *, min_uncached_tokens: int,
                 lease_s: float, reservation_ttl_s: float = 600.0,
                 engine_headers: Mapping[str, str] | None = None,
                 pull_overhead_s: float | None = None) -> None:
        """Wire the gateway to the app's runtime, services and engine instances (the
        registry is the one source of what is in routing: its /health scrapes, and this
        gateway's reports of engines it could not reach)."""
        self.runtime, self.services, self.feeds = runtime, services, feeds
        self.registry = feeds.registry
        self.tokens, self.legs = tokens, legs
        tokens.unreachable = lambda name: self._out_of_routing({name}, "tokenize")
        self.chooser = PairChooser(min_uncached_tokens)
        self.snapshots = LiveSnapshots()
        self.lease_s, self.reservation_ttl_s = lease_s, reservation_ttl_s
        self.engine_headers = dict(engine_headers or {})
        self.pull_overhead = PullOverhead(self._price_pulls, pinned=pull_overhead_s)

    async def handle(self, request: Request, path: str) -> Response:
        """Serve one ``/v1/completions`` or ``/v1/chat/completions`` request."""
        body = parse_body(await request.body(), path)
        model: str = body["model"]
        if not self.registry.serves(model):
            raise NotFoundError("model", model, "served: " + (
                ", ".join(self.registry.models()) or "none"))
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        tokens = await self.tokens.of(body, self.registry.routable_instances(model))
        watch = DisconnectWatch(request.receive)
        try:
            gone: set[str] = set()
            for _ in range(MAX_ATTEMPTS):
                route = await self._route(model, tokens, request_id)
                answer = await self._attempt(watch, route, body, path, request_id,
                                             tokens.ids)
                if isinstance(answer, Response):
                    return answer
                gone |= answer
        except BaseException:
            watch.stop()
            raise
        watch.stop()
        raise UnschedulableError([f"engines unreachable: {', '.join(sorted(gone))}"])

    async def _route(self, model: str, tokens: PromptTokens, request_id: str) -> Route:
        """The route over the instances in routing now (an engine found unreachable by
        an earlier attempt is out of routing already)."""
        if not self.registry.routable_instances(model):
            raise UnschedulableError([f"no instance of {model} is in routing (states: "
                                      f"{self._states(model)})"])
        request = route_request(request_id[:256], model, tokens)
        self.pull_overhead.refresh()
        decision, snapshot = await decide(
            request, self.services, self.runtime, self.registry, entries=(),
            loads=await self.runtime.loads.loads(), snapshots=self.snapshots)
        if isinstance(decision, Unschedulable):
            raise UnschedulableError(list(decision.reasons))
        fabric = self.services.fabric
        assert fabric is not None  # decide() refuses without one
        result = self.chooser.choose(
            decision, self.registry.get, fabric,
            lambda: self.registry.routable_instances(model), tokens.count,
            snapshot.block_tokens)
        if isinstance(result, Unschedulable):
            raise UnschedulableError(list(result.reasons))
        if decision.pull is None:
            return result
        # (the overhead the router priced with: no await since its decision)
        return dataclasses.replace(result, pull_overhead_s=self.pull_overhead.seconds)

    def _price_pulls(self, overhead_s: float) -> None:
        """Price prefix pulls with ``overhead_s`` of fixed cost: in the router now, in
        fabrics to come, on the gauge (:mod:`api.gateway.pull_cost`)."""
        services = self.services
        services.routing = dataclasses.replace(services.routing, pull_overhead_s=overhead_s)
        if services.fabric is not None:
            services.fabric.router.set_pull_overhead(overhead_s)
        self.runtime.telemetry.handoff.pull_overhead.set((), overhead_s)

    def _states(self, model: str) -> str:
        states = [f"{s.name} {s.state}" for s in self.registry.status()
                  if (i := self.registry.get(s.name)) is not None and i.model == model]
        return ", ".join(states[:8]) + (" …" if len(states) > 8 else "")

    async def _attempt(self, watch: DisconnectWatch, route: Route, body: dict[str, Any],
                       path: str, request_id: str, token_ids: tuple[int, ...]
                       ) -> Response | set[str]:
        """The relayed answer (it stops ``watch`` when it ends), or the engines found
        unreachable (route again)."""
        held = Held(self.runtime.loads, route, owner=self.runtime.replica_id,
                    ttl_s=self.reservation_ttl_s, max_tokens=output_limit(body))
        await held.reserve()
        timeline = Timeline()
        copy = prefix_copy(route, token_ids, self.registry.get)
        if isinstance(copy, str):
            timeline.pull_outcome, timeline.pull_failure = "skipped", copy
        plan = LegPlan(path=path, body=body, request_id=request_id, decode=route.decode,
                       prefill=route.prefill, lease_s=self.lease_s, headers=self.engine_headers,
                       on_handoff=self._handoff_noter(route),
                       pull=copy if isinstance(copy, PrefixCopy) else None)
        protocol = protocol_for(route.decode.engine)
        try:
            answer = await watch.run(protocol.open(self.legs, plan, timeline))
        except EngineUnreachableError as exc:
            await held.release_all()
            gone = {exc.engine, *timeline.unreachable}
            self._out_of_routing(gone, exc.detail)
            self._record(route, timeline, "engine-error")
            return gone
        except ClientGoneError:
            watch.stop()
            await held.release_all()
            self._record(route, timeline, "cancelled")
            return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            await held.release_all()
            raise
        self._out_of_routing(set(timeline.unreachable), "prefill leg")
        await held.release_prefill()
        return RelayResponse(answer, route, held, self, watch)

    def _handoff_noter(self, route: Route) -> Callable[[], None]:
        """Called when the decode leg is about to carry the prefill's KV: the decode
        engine's next NIXL transfer is this pair's (labels its figures by tier)."""
        def note() -> None:
            if route.prefill is not None:
                self.feeds.handoffs.note(route.decode.name, route.prefill.name, route.tier,
                                         via="gateway")
        return note

    def _out_of_routing(self, names: set[str], detail: str) -> None:
        for name in names:
            log.warning("engine %s unreachable (%s): out of routing until its /health "
                        "answers", name, detail)
            self.registry.mark_down(name, f"unreachable from the gateway: {detail}")

    def _record(self, route: Route, timeline: Timeline, outcome: str) -> None:
        pull = route.decision.pull
        if timeline.pull_outcome == "ok" and timeline.pull_s is not None and pull is not None:
            self.pull_overhead.observe(timeline.pull_s, pull.seconds - route.pull_overhead_s)
        moved = timeline.disaggregated
        mode = "fallback" if timeline.fallback else route.mode
        tier = route.tier if moved else LOCAL
        self.runtime.telemetry.handoff.record(Handoff(
            tier=tier, mode=mode, outcome=outcome, prefill_s=timeline.prefill_s,
            handoff_s=timeline.handoff_s if moved else None,
            decode_ttft_s=timeline.decode_ttft_s,
            kv_bytes=route.decision.transfer.bytes if moved and outcome == "ok" else 0,
            pull_outcome=timeline.pull_outcome, pull_s=timeline.pull_s,
            src_domain=self.runtime.domain_of(route.prefill.gpu_names) if route.prefill
            else "unknown", dst_domain=self.runtime.domain_of(route.decode.gpu_names)))


class RelayResponse(Response):
    """Streams an engine's answer to the client as it arrives, ends every leg when the
    client leaves, and gives the request's load back however it ends."""

    def __init__(self, answer: UpstreamAnswer, route: Route, held: Held,
                 gateway: Gateway, watch: DisconnectWatch) -> None:
        """Relay ``answer`` (headers: the engine's content type and the decision's) while
        ``watch`` looks out for the client leaving."""
        self.answer, self.route, self.held, self.gateway = answer, route, held, gateway
        self.watch = watch
        self.status_code, self.background = answer.status_code, None
        self.init_headers(explain(route, answer.timeline, answer.response.headers))
        self.outcome = "ok" if answer.status_code < 400 else (
            "client-error" if answer.status_code < 500 else "engine-error")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the head, then the body chunk by chunk until the end or a disconnect."""
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            await self.watch.run(self._pump(send))
        except ClientGoneError:
            self.outcome = "cancelled"
        finally:
            self.watch.stop()
            await self.answer.aclose()
            await self.held.release_all()
            self.gateway._record(self.route, self.answer.timeline, self.outcome)

    async def _pump(self, send: Send) -> None:
        """Each piece as it arrives; the last one goes with the end of the body (one
        write to the client, not two)."""
        answer = self.answer
        try:
            while True:
                data, last = await answer.read_some()
                if last:
                    await send({"type": "http.response.body", "body": data, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except TransportError as exc:
            sse = (answer.media_type or "").startswith("text/event-stream")
            self.outcome = "engine-error"
            self.gateway._out_of_routing({self.route.decode.name}, type(exc).__name__)
            if sse:
                await send({"type": "http.response.body", "more_body": True,
                            "body": _sse_error(f"decode engine {self.route.decode.name} "
                                               f"failed mid-stream ({type(exc).__name__})")})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class DisconnectWatch:
    """Looks out for one request's client leaving, with one task for the whole request
    (its legs and its relay): a disconnect while :meth:`run` awaits cancels the
    request's own task where it waits (the legs and the relay close what they hold),
    and :meth:`run` raises :class:`ClientGoneError`. Start it once the body is read."""

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._owner = asyncio.current_task()
        self._armed = self._cancelled = False
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._armed and self._owner is not None:
            self._armed, self._cancelled = False, True
            self._owner.cancel()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """``work``'s result; :class:`ClientGoneError` (``work`` cancelled where it
        waits, or never started) when the client leaves first."""
        if self.gone:
            work.close()
            raise ClientGoneError
        self._armed = True
        try:
            return await work
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
            self._cancelled = False
            if self._owner is not None:
                self._owner.uncancel()
            raise ClientGoneError from None
        finally:
            self._armed = False

    def stop(self) -> None:
        """Stop watching (the request ended)."""
        self._task.cancel()


def route_request(request_id: str, model: str, tokens: PromptTokens) -> RouteRequest:
    """The router's request for ``tokens``. The gateway's token ids are ints already
    (:func:`api.gateway.tokens.all_ints`), so when they are also non-negative, and the
    id and count within the model's bounds, the request is built without pydantic's
    per-item validation (~65 us for 1,024 ids); anything else is validated as before."""
    ids = list(tokens.ids)
    if 1 <= len(request_id) <= 256 and tokens.count >= 1 and (not ids or min(ids) >= 0) \
            and len(ids) <= 1 << 22:
        return RouteRequest.model_construct(request_id=request_id, model=model,
                                            token_ids=ids, prompt_tokens=tokens.count)
    return RouteRequest(request_id=request_id, model=model, token_ids=ids,
                        prompt_tokens=tokens.count)


def explain(route: Route, timeline: Timeline, upstream: Mapping[str, str]) -> dict[str, str]:
    """The response headers: the engine's content type and the decision, explained."""
    mode = "decode-only" if timeline.fallback else route.mode
    headers = {
        "x-toposched-decode": route.decode.name,
        "x-toposched-prefill": route.prefill.name if timeline.disaggregated and route.prefill
        else "-",
        "x-toposched-mode": mode,
        "x-toposched-tier": route.tier if timeline.disaggregated else LOCAL,
        "x-toposched-prompt-tokens": str(route.prompt_tokens),
        "x-toposched-decode-cached-tokens": str(route.decode_cached_tokens),
        "x-toposched-pull": _pulled(route, timeline),
        "x-toposched-reason": _ascii(timeline.fallback or route.reason),
        "x-toposched-request-id": _ascii(route.decision.request_id)}
    if timeline.prefill_s is not None:
        headers["x-toposched-prefill-ms"] = f"{timeline.prefill_s * 1e3:.2f}"
    for name in ("content-type", "content-length"):
        if name in upstream:
            headers[name] = upstream[name]
    return headers


def _pulled(route: Route, timeline: Timeline) -> str:
    """``<holder>; blocks=<n>`` for a prefix copy that landed, ``-`` otherwise."""
    pull = route.decision.pull
    if timeline.pull_outcome != "ok" or pull is None:
        return "-"
    return _ascii(f"{pull.source}; blocks={pull.blocks}")


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()[:512]


def _sse_error(message: str) -> bytes:
    payload = {"error": {"message": message, "type": "engine_error", "code": 502}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def parse_body(raw: bytes, path: str) -> dict[str, Any]:
    """The request's JSON object, checked as far as routing needs (422 naming fields)."""
    try:
        body = loads(raw)
    except ValueError as exc:
        raise ValidationError(path, [Issue("body", f"not JSON: {exc}")]) from None
    if not isinstance(body, dict):
        raise ValidationError(path, [Issue("body", "must be a JSON object")])
    issues = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        issues.append(Issue("body.model", "required: the model's name (GET /v1/models)"))
    prompt_field = "messages" if path.endswith("chat/completions") else "prompt"
    if prompt_field not in body:
        issues.append(Issue(f"body.{prompt_field}", "required"))
    if prompt_field == "messages" and not isinstance(body.get("messages"), list):
        issues.append(Issue("body.messages", "must be a list of chat messages"))
    if "stream" in body and not isinstance(body["stream"], bool):
        issues.append(Issue("body.stream", "must be true or false"))
    if issues:
        raise ValidationError(path, issues)
    return body
