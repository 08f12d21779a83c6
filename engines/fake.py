"""Protocol-faithful stand-ins for what one real engine cannot show.

* :class:`FakePublisher` speaks the KV-event protocol of vLLM's ``ZmqEventPublisher``
  (PUB frames ``[topic, seq, msgpack [ts, events, dp_rank]]``, a ROUTER replay buffer
  answering ``[topic, seq, payload]`` then sequence -1) in either event encoding — maps
  keyed by ``"type"`` or the older positional arrays — and can skip sequence numbers
  (a gap) or restart its numbering.
* :func:`metrics_text` writes ``/metrics`` text with vLLM's or SGLang's metric names,
  including vLLM's deprecated ``vllm:gpu_cache_usage_perc``.

Used by tests, the benchmark and toposched's own fake engines; never by the routing path.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import zmq

from engines.events import (
    END_OF_REPLAY,
    BlocksRemoved,
    BlocksStored,
    EngineEvent,
    encode_seq,
)

Encoding = Literal["map", "array"]


def encode_event(event: EngineEvent, encoding: Encoding) -> Any:
    """One event as plain data in ``encoding`` (what msgpack then writes)."""
    if isinstance(event, BlocksStored):
        fields: list[tuple[str, Any]] = [
            ("block_hashes", list(event.block_hashes)), ("parent_block_hash", event.parent),
            ("token_ids", list(event.token_ids)), ("block_size", event.block_size),
            ("lora_id", event.lora_id), ("medium", event.medium),
            ("lora_name", event.lora_name),
            ("extra_keys", None if event.extra_keys is None else list(event.extra_keys)),
            ("group_idx", event.group_idx)]
        tag = "BlockStored"
    elif isinstance(event, BlocksRemoved):
        fields = [("block_hashes", list(event.block_hashes)), ("medium", event.medium),
                  ("group_idx", event.group_idx)]
        tag = "BlockRemoved"
    else:
        fields, tag = [], "AllBlocksCleared"
    if encoding == "map":
        return {"type": tag, **dict(fields)}
    return [tag, *(value for _, value in fields)]


def encode_batch(events: Sequence[EngineEvent], encoding: Encoding, *, ts: float | None = None,
                 dp_rank: int | None = 0) -> bytes:
    """A ``[ts, events, dp_rank]`` payload."""
    body = [encode_event(event, encoding) for event in events]
    return msgspec.msgpack.encode([time.time() if ts is None else ts, body, dp_rank])


class FakePublisher:
    """A KV-event publisher with a replay buffer, like one vLLM engine's.

    ``endpoint`` is bound (``tcp://127.0.0.1:0`` picks a port: see :attr:`endpoint`)
    unless ``connect`` is set, then the PUB socket connects to a bound subscriber (the
    centralised mode). Call :meth:`close` when done.
    """

    def __init__(self, *, endpoint: str = "tcp://127.0.0.1:0",
                 replay_endpoint: str | None = "tcp://127.0.0.1:0", topic: str = "",
                 encoding: Encoding = "map", buffer_steps: int = 10_000,
                 connect: bool = False, dp_rank: int = 0) -> None:
        self.encoding, self.topic, self.dp_rank = encoding, topic, dp_rank
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.setsockopt(zmq.LINGER, 0)
        if connect:
            self._pub.connect(endpoint)
            self.endpoint = endpoint
        else:
            self._pub.bind(endpoint)
            self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._lock = threading.Lock()
        self._seq = 0
        self._running = True
        self.replay_endpoint: str | None = None
        self._thread: threading.Thread | None = None
        if replay_endpoint is not None:
            self._start_replay(replay_endpoint)

    def _start_replay(self, endpoint: str) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(endpoint)
        self.replay_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._serve_replay, args=(router,), daemon=True,
                                        name="fake-kv-replay")
        self._thread.start()

    def _serve_replay(self, router: zmq.Socket[bytes]) -> None:
        topic = self.topic.encode()
        try:
            while self._running:
                if not router.poll(50):
                    continue
                frames = router.recv_multipart()
                if len(frames) != 3:
                    continue
                start = int.from_bytes(frames[2], "big", signed=True)
                with self._lock:
                    kept = [(s, p) for s, p in self._buffer if s >= start]
                for seq, payload in kept:
                    router.send_multipart([frames[0], b"", topic, encode_seq(seq), payload])
                router.send_multipart([frames[0], b"", b"", encode_seq(END_OF_REPLAY), b""])
        finally:
            router.close()

    @property
    def next_seq(self) -> int:
        """The sequence number the next batch will get."""
        return self._seq

    def publish(self, events: Sequence[EngineEvent], *, send: bool = True,
                ts: float | None = None) -> int:
        """Publish one batch; returns its sequence number. ``send=False`` keeps it in the
        replay buffer only (a batch the subscriber missed: a gap)."""
        payload = encode_batch(events, self.encoding, ts=ts, dp_rank=self.dp_rank)
        with self._lock:
            seq = self._seq
            self._seq += 1
            self._buffer.append((seq, payload))
        if send:
            self._pub.send_multipart([self.topic.encode(), encode_seq(seq), payload])
        return seq

    def restart(self) -> None:
        """Start numbering at 0 again with an empty buffer (the engine restarted)."""
        with self._lock:
            self._seq = 0
            self._buffer.clear()

    def forget_before(self, seq: int) -> None:
        """Drop buffered batches below ``seq`` (older history aged out of the buffer)."""
        with self._lock:
            kept = [(s, p) for s, p in self._buffer if s >= seq]
            self._buffer.clear()
            self._buffer.extend(kept)

    def close(self) -> None:
        """Stop the replay thread and close the sockets."""
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._pub.close()
        self._context.term()


def stored(tokens: Sequence[int], block_size: int, *, hashes: Sequence[int] | None = None,
           parent: int | None = None, **extra: Any) -> BlocksStored:
    """A store event for the full blocks of ``tokens`` (engine hashes made up unless
    given: any distinct ints do, toposched keys blocks by their tokens)."""
    count = len(tokens) // block_size
    made = hashes if hashes is not None else [hash((parent, tuple(tokens[:(i + 1) * block_size])))
                                              & ((1 << 63) - 1) for i in range(count)]
    return BlocksStored(tuple(made), parent, tuple(tokens[:count * block_size]), block_size,
                        **extra)


def metrics_text(engine: str = "vllm", *, running: float = 0, waiting: float = 0,
                 kv_usage: float = 0.0, block_size: int = 32, num_blocks: int = 1000,
                 mean_prompt_tokens: float | None = None, legacy: bool = False,
                 nixl: tuple[float, float, float] | None = None) -> str:
    """``/metrics`` text with ``engine``'s names (vLLM's deprecated KV name with
    ``legacy``); ``nixl``: (transfers, seconds, bytes) running totals."""
    if engine == "sglang":
        return _sglang_text(running, waiting, kv_usage, block_size, num_blocks)
    kv = "vllm:gpu_cache_usage_perc" if legacy else "vllm:kv_cache_usage_perc"
    lines = [f'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{engine="0"}} '
             f"{running}",
             f'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{engine="0"}} '
             f"{waiting}",
             f'# TYPE {kv} gauge\n{kv}{{engine="0"}} {kv_usage}',
             f"# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info"
             f'{{block_size="{block_size}",engine="0",num_gpu_blocks="{num_blocks}"}} 1.0']
    if mean_prompt_tokens is not None:
        lines.append("# TYPE vllm:request_prompt_tokens histogram\n"
                     f'vllm:request_prompt_tokens_count{{engine="0"}} 10.0\n'
                     f'vllm:request_prompt_tokens_sum{{engine="0"}} {10 * mean_prompt_tokens}')
    if nixl is not None:
        lines.append(_nixl_text(*nixl))
    return "\n".join(lines) + "\n"


def _sglang_text(running: float, waiting: float, usage: float, page: int, blocks: int) -> str:
    return (f"# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{{name=\"m\"}} "
            f"{running}\n# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs"
            f"{{name=\"m\"}} {waiting}\n# TYPE sglang:token_usage gauge\nsglang:token_usage"
            f"{{name=\"m\"}} {usage}\n# TYPE sglang:max_total_num_tokens gauge\n"
            f"sglang:max_total_num_tokens{{name=\"m\"}} {blocks * page}\n"
            f"# TYPE sglang:cache_config_info gauge\nsglang:cache_config_info"
            f"{{name=\"m\",page_size=\"{page}\"}} 1.0\n")


def _nixl_text(transfers: float, seconds: float, nbytes: float) -> str:
    return ("# TYPE vllm:nixl_xfer_time_seconds histogram\n"
            f'vllm:nixl_xfer_time_seconds_count{{engine="0"}} {transfers}\n'
            f'vllm:nixl_xfer_time_seconds_sum{{engine="0"}} {seconds}\n'
            "# TYPE vllm:nixl_bytes_transferred histogram\n"
            f'vllm:nixl_bytes_transferred_count{{engine="0"}} {transfers}\n'
            f'vllm:nixl_bytes_transferred_sum{{engine="0"}} {nbytes}\n')
