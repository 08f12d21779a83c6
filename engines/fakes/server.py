"""The fake engine's HTTP server: a plain ASGI app speaking vLLM's or SGLang's dialect.

What it does like the real engines (../shared/docs/ENGINES.md):

* OpenAI ``/v1/completions`` and ``/v1/chat/completions`` (JSON or SSE), ``/v1/models``,
  ``/tokenize`` (vLLM's shape), ``/health`` and Prometheus ``/metrics`` under the
  engine's own names (``vllm:…`` or ``sglang:…``);
* vLLM flavour: a body with ``kv_transfer_params.do_remote_decode`` is a prefill leg —
  the prompt's KV is kept in blocks for ``lease_s`` and the answer carries
  ``kv_transfer_params`` (block ids per KV group, engine id, side channel, ``tp_size``,
  …); a body with ``do_remote_prefill`` is a decode leg — the KV is read from the
  prefill engine's side channel (``/_fake/nixl/read`` here) and the blocks freed. Block
  ids are not handed out again while leased (a prefill finding every block leased
  waits, as a real engine queues it). Read after the lease, the blocks hold other data
  and the tokens come out wrong, as with a real engine; an unknown engine id or too
  few blocks gives 500;
* SGLang flavour: ``--role prefill`` servers publish the prompt's KV in the bootstrap
  room named by ``bootstrap_room``; ``--role decode`` servers wait for that room on
  ``bootstrap_host:bootstrap_port`` (``/_fake/bootstrap/{room}`` here) and refuse bodies
  without one.

What real engines cannot show on demand is configurable: leg delays (slow legs), lease
length (expiry), TP size (mixed TP). ``/_fake/state`` reports what happened (legs
served, aborted requests, stale reads, parameters altered on the way) for tests, and
``POST /_fake/gate {"open": false}`` holds every stream after its first token (and
every vLLM prefill leg before its answer) until the gate opens again: a request in
flight, without racing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from engines.fakes.model import (
    BlockPool,
    chat_prompt,
    detokenize,
    generate,
    prompt_tokens,
    tokenize_text,
)

#: How often a prefill leg waiting for free KV blocks looks again.
BLOCK_WAIT_S = 0.002

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class FakeConfig:
    """How one fake engine behaves."""

    flavour: Literal["vllm", "sglang"] = "vllm"
    role: Literal["prefill", "decode", "both"] = "both"
    model: str = "fake-model"
    #: Host and port other engines reach this one on (side channel / bootstrap).
    advertise_host: str = "127.0.0.1"
    port: int = 8000
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tp_size: int = 1
    block_size: int = 16
    num_blocks: int = 4096
    lease_s: float = 30.0
    kv_bytes_per_token: int = 4096
    #: Delays: per prompt token of a prefill, before the first and between later tokens.
    prefill_s_per_token: float = 0.0
    first_token_s: float = 0.0
    token_s: float = 0.0
    bootstrap_timeout_s: float = 10.0


@dataclass
class _Lease:
    blocks: list[int]
    expires: float
    params: dict[str, Any]


class HttpError(Exception):
    """An error answer (status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class FakeEngine:
    """The ASGI app of one fake engine."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.pool = BlockPool(config.num_blocks, config.block_size)
        self.leases: dict[str, _Lease] = {}
        self.rooms: dict[int, list[int]] = {}
        self.counts: Counter[str] = Counter()
        self.running = 0
        self.bytes_read = 0
        self.xfer_seconds = 0.0
        self._http: httpx.AsyncClient | None = None
        #: Streams pause after their first token while the gate is closed (tests use it
        #: to look at a request in flight without racing it).
        self.gate = asyncio.Event()
        self.gate.set()

    @property
    def http(self) -> httpx.AsyncClient:
        """The client for side-channel reads and bootstrap polls."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        return self._http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if method == "GET":
                await self._get(path, send)
            elif method == "POST":
                await self._post(path, await _body(receive), receive, send)
            else:
                raise HttpError(405, "method not allowed")
        except HttpError as exc:
            await _json(send, exc.status, {"error": {"message": exc.message,
                                                     "code": exc.status}})

    # -- GET ---------------------------------------------------------------------
    async def _get(self, path: str, send: Send) -> None:
        if path == "/health":
            await _json(send, 200, {})
        elif path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [
                {"id": self.config.model, "object": "model", "owned_by": "fake"}]})
        elif path == "/metrics":
            await _text(send, self.metrics())
        elif path == "/_fake/state":
            await _json(send, 200, {"counts": dict(self.counts), "running": self.running,
                                    "leases": len(self.leases), "bytes_read": self.bytes_read,
                                    "free_blocks": self.pool.free_blocks,
                                    "engine_id": self.config.engine_id})
        elif path.startswith("/_fake/bootstrap/"):
            await self._bootstrap(path.rsplit("/", 1)[1], send)
        else:
            raise HttpError(404, f"no route {path}")

    async def _bootstrap(self, room: str, send: Send) -> None:
        tokens = self.rooms.pop(int(room), None) if room.isdigit() else None
        if tokens is None:
            raise HttpError(404, "room not ready")
        await _json(send, 200, {"tokens": tokens})

    # -- POST --------------------------------------------------------------------
    async def _post(self, path: str, raw: bytes, receive: Receive, send: Send) -> None:
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        if path == "/tokenize":
            text = chat_prompt(body["messages"]) if "messages" in body else None
            tokens = tokenize_text(text) if text is not None else prompt_tokens(body)
            await _json(send, 200, {"count": len(tokens), "max_model_len": 1 << 16,
                                    "tokens": tokens})
        elif path == "/_fake/gate":
            (self.gate.set if body.get("open", True) else self.gate.clear)()
            await _json(send, 200, {"open": self.gate.is_set()})
        elif path == "/_fake/nixl/read":
            await _json(send, *self._side_channel_read(body))
        elif path in ("/v1/completions", "/v1/chat/completions"):
            await self._watched(self._complete(path, body, send), receive)
        else:
            raise HttpError(404, f"no route {path}")

    async def _watched(self, work: Awaitable[None], receive: Receive) -> None:
        """Run ``work``; a client that leaves cancels it (the engine aborts the request)."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(_disconnected(receive))
        self.running += 1
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                task.cancel()
                self.counts["aborted"] += 1
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                task.result()
        finally:
            watch.cancel()
            self.running -= 1

    async def _complete(self, path: str, body: dict[str, Any], send: Send) -> None:
        chat = path.endswith("chat/completions")
        tokens = prompt_tokens(body)
        if not tokens:
            raise HttpError(400, "the prompt is empty")
        params = body.get("kv_transfer_params")
        if self.config.flavour == "vllm" and isinstance(params, dict) \
                and params.get("do_remote_decode"):
            await self._vllm_prefill(body, tokens, chat, send)
            return
        context = await self._context(body, tokens)
        count = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        out = generate(context, count)
        if body.get("stream"):
            await self._stream(out, chat, send)
        else:
            await asyncio.sleep(self.config.first_token_s + self.config.token_s * (count - 1))
            await _json(send, 200, _answer(self.config.model, out, chat))

    async def _context(self, body: dict[str, Any], tokens: list[int]) -> list[int]:
        """The KV the decode starts from: read from a prefill engine, or computed here."""
        params = body.get("kv_transfer_params")
        if self.config.flavour == "vllm" and isinstance(params, dict) \
                and params.get("do_remote_prefill"):
            self.counts["decode_leg"] += 1
            return await self._vllm_read(params, tokens)
        if self.config.flavour == "sglang" and self.config.role == "prefill":
            return await self._sglang_prefill(body, tokens)
        if self.config.flavour == "sglang" and self.config.role == "decode":
            self.counts["decode_leg"] += 1
            return await self._sglang_wait(body)
        self.counts["whole"] += 1
        await asyncio.sleep(self.config.prefill_s_per_token * len(tokens))
        return tokens

    # -- vLLM NixlConnector --------------------------------------------------------
    async def _vllm_prefill(self, body: dict[str, Any], tokens: list[int], chat: bool,
                            send: Send) -> None:
        self.counts["prefill_leg"] += 1
        self._sweep()
        await asyncio.sleep(self.config.prefill_s_per_token * len(tokens))
        await self.gate.wait()
        blocks = await self._blocks(tokens)
        request_id = f"fake-{uuid.uuid4().hex[:12]}"
        params = {"do_remote_prefill": True, "do_remote_decode": False,
                  "remote_block_ids": [blocks], "remote_engine_id": self.config.engine_id,
                  "remote_request_id": request_id, "remote_host": self.config.advertise_host,
                  "remote_port": self.config.port, "tp_size": self.config.tp_size,
                  "remote_num_tokens": len(tokens), "remote_blocks_expiry_time": None}
        self.leases[request_id] = _Lease(blocks, time.monotonic() + self.config.lease_s,
                                         json.loads(json.dumps(params)))
        answer = _answer(self.config.model, generate(tokens, 1), chat)
        answer["kv_transfer_params"] = params
        await _json(send, 200, answer)

    async def _blocks(self, tokens: list[int]) -> list[int]:
        """Blocks holding ``tokens``; while every block is leased the request waits, as
        a real engine's scheduler keeps it queued (leases end by decode reads or expiry)."""
        if self.pool.blocks_for(len(tokens)) > self.pool.num_blocks:
            raise HttpError(400, f"the prompt needs more than the engine's "
                                 f"{self.pool.num_blocks} KV blocks")
        blocks = self.pool.store(tokens)
        if blocks is None:
            self.counts["waited_for_blocks"] += 1
        while blocks is None:
            await asyncio.sleep(BLOCK_WAIT_S)
            self._sweep()
            blocks = self.pool.store(tokens)
        return blocks

    def _sweep(self) -> None:
        now = time.monotonic()
        for key in [k for k, lease in self.leases.items() if lease.expires < now]:
            self.pool.free(self.leases.pop(key).blocks)
            self.counts["expired"] += 1

    def _side_channel_read(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Serve a decode engine's NIXL READ of this engine's blocks."""
        params = body.get("params") or {}
        if params.get("remote_engine_id") != self.config.engine_id:
            return 404, {"error": "unknown engine id"}
        lease = self.leases.pop(str(params.get("remote_request_id")), None)
        if lease is not None and lease.params != params:
            self.counts["altered_params"] += 1
        groups = params.get("remote_block_ids") or [[]]
        blocks = [int(b) for b in groups[0]]
        stale = lease is None or lease.expires < time.monotonic()
        if stale:
            self.counts["stale_reads"] += 1
        if stale and lease is not None:
            self.pool.free(lease.blocks)  # expired: freed before the read comes
        tokens = self.pool.read(blocks)
        if lease is not None:
            self.pool.free(lease.blocks)  # the decode engine's notification
        return 200, {"tokens": tokens}

    async def _vllm_read(self, params: dict[str, Any], tokens: list[int]) -> list[int]:
        started = time.perf_counter()
        url = f"http://{params.get('remote_host')}:{params.get('remote_port')}/_fake/nixl/read"
        try:
            answer = await self.http.post(url, json={"params": params})
        except httpx.TransportError as exc:
            raise HttpError(500, f"KV transfer failed: {type(exc).__name__}") from None
        if answer.status_code != 200:
            raise HttpError(500, f"KV transfer failed: side channel said {answer.status_code}")
        remote = [int(t) for t in answer.json()["tokens"]][:int(
            params.get("remote_num_tokens") or len(tokens))]
        if len(remote) < len(tokens) - self.config.block_size:
            raise HttpError(500, "fewer KV blocks than the prompt needs")
        self.bytes_read += len(remote) * self.config.kv_bytes_per_token
        self.xfer_seconds += time.perf_counter() - started
        self.counts["transfers"] += 1
        return remote + tokens[len(remote):]

    # -- SGLang bootstrap ------------------------------------------------------------
    async def _sglang_prefill(self, body: dict[str, Any], tokens: list[int]) -> list[int]:
        room = body.get("bootstrap_room")
        if not isinstance(room, int):
            raise HttpError(400, "a prefill server needs bootstrap_room")
        self.counts["prefill_leg"] += 1
        await asyncio.sleep(self.config.prefill_s_per_token * len(tokens))
        self.rooms[room] = tokens
        return tokens

    async def _sglang_wait(self, body: dict[str, Any]) -> list[int]:
        host, port, room = (body.get(k) for k in ("bootstrap_host", "bootstrap_port",
                                                  "bootstrap_room"))
        if not (isinstance(host, str) and isinstance(port, int) and isinstance(room, int)):
            raise HttpError(400, "a decode server needs bootstrap_host, bootstrap_port "
                                 "and bootstrap_room")
        deadline = time.monotonic() + self.config.bootstrap_timeout_s
        while time.monotonic() < deadline:
            try:
                answer = await self.http.get(f"http://{host}:{port}/_fake/bootstrap/{room}")
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == 200:
                kv: list[int] = answer.json()["tokens"]
                self.bytes_read += len(kv) * self.config.kv_bytes_per_token
                self.counts["transfers"] += 1
                return kv
            await asyncio.sleep(0.002)
        raise HttpError(500, f"bootstrap room {room} never filled (KV transfer timed out)")

    # -- answers -----------------------------------------------------------------------
    async def _stream(self, out: list[int], chat: bool, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8")]})
        for i, token in enumerate(out):
            await asyncio.sleep(self.config.first_token_s if i == 0 else self.config.token_s)
            chunk = _chunk(self.config.model, token, chat, last=i == len(out) - 1)
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + json.dumps(chunk).encode() + b"\n\n"})
            await self.gate.wait()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    def metrics(self) -> str:
        """Prometheus text under the flavour's metric names."""
        c, model = self.config, self.config.model
        label = f'{{model_name="{model}"}}'
        if c.flavour == "sglang":
            return (f"sglang:num_running_reqs{label} {self.running}\n"
                    f"sglang:num_queue_reqs{label} 0\nsglang:token_usage{label} 0.0\n"
                    f'sglang:cache_config_info{{model_name="{model}",page_size="{c.block_size}"}}'
                    " 1\n")
        return (f"vllm:num_requests_running{label} {self.running}\n"
                f"vllm:num_requests_waiting{label} 0\nvllm:kv_cache_usage_perc{label} 0.0\n"
                f'vllm:cache_config_info{{block_size="{c.block_size}",'
                f'num_gpu_blocks="{c.num_blocks}"}} 1\n'
                "# TYPE vllm:nixl_bytes_transferred histogram\n"
                f"vllm:nixl_bytes_transferred_sum{label} {self.bytes_read}\n"
                f"vllm:nixl_bytes_transferred_count{label} {self.counts['transfers']}\n"
                "# TYPE vllm:nixl_xfer_time_seconds histogram\n"
                f"vllm:nixl_xfer_time_seconds_sum{label} {self.xfer_seconds}\n"
                f"vllm:nixl_xfer_time_seconds_count{label} {self.counts['transfers']}\n"
                "# TYPE vllm:nixl_num_kv_expired_reqs counter\n"
                f"vllm:nixl_num_kv_expired_reqs_total{label} {self.counts['expired']}\n")


def _answer(model: str, out: list[int], chat: bool) -> dict[str, Any]:
    text = "".join(map(detokenize, out))
    created = int(time.time())
    if chat:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": created, "model": model, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": text},
                    "token_ids": out, "finish_reason": "length"}]}
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
            "model": model, "choices": [{"index": 0, "text": text, "token_ids": out,
                                         "logprobs": None, "finish_reason": "length"}]}


def _chunk(model: str, token: int, chat: bool, *, last: bool) -> dict[str, Any]:
    finish = "length" if last else None
    if chat:
        return {"object": "chat.completion.chunk", "model": model, "choices": [{
            "index": 0, "delta": {"content": detokenize(token)}, "token_ids": [token],
            "finish_reason": finish}]}
    return {"object": "text_completion", "model": model, "choices": [{
        "index": 0, "text": detokenize(token), "token_ids": [token],
        "finish_reason": finish}]}


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(send: Send, status: int, data: Mapping[str, Any]) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _text(send: Send, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; version=0.0.4")]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
