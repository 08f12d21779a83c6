"""A protocol-faithful fake engine for service tests: ``/health`` and ``/metrics`` over
HTTP (stdlib server in a thread) and a KV-event publisher (:class:`engines.fake.FakePublisher`).

Its metric text, health status and events are set by the test; :meth:`FakeEngine.kill`
closes the HTTP port and the publisher like a crashed engine (connections refused).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engines.fake import Encoding, FakePublisher, metrics_text
from engines.instance import EngineInstance


class FakeEngine:
    """One fake engine (see module docstring); ``engine`` picks the metric names."""

    def __init__(self, name: str, *, engine: str = "vllm", encoding: Encoding = "map",
                 **metrics: Any) -> None:
        self.name, self.engine = name, engine
        self.health_status = 200
        self.metrics = metrics_text("sglang" if engine == "sglang" else "vllm", **metrics)
        self.publisher = FakePublisher(encoding=encoding, topic=f"kv@{name}")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.alive = True

    @property
    def base_url(self) -> str:
        """Its HTTP base URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_metrics(self, **metrics: Any) -> None:
        """Serve new /metrics figures (names of this engine kind)."""
        self.metrics = metrics_text("sglang" if self.engine == "sglang" else "vllm",
                                    **metrics)

    def instance(self, **overrides: Any) -> EngineInstance:
        """This engine as an instance declaration."""
        data: dict[str, Any] = {
            "name": self.name, "engine": self.engine, "role": "both", "model": "m",
            "base_url": self.base_url, "host": "z0-p0-r0-h00", "gpus": [0],
            "kv_events": {"endpoint": self.publisher.endpoint,
                          "replay_endpoint": self.publisher.replay_endpoint,
                          "topic": self.publisher.topic}}
        if self.engine == "vllm":
            data["nixl_side_channel"] = "127.0.0.1:5600"
        data.update(overrides)
        return EngineInstance.model_validate(data)

    def kill(self) -> None:
        """Stop answering (refused connections) and stop publishing."""
        if self.alive:
            self.alive = False
            self._server.shutdown()
            self._server.server_close()
            self.publisher.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    self._answer(engine.health_status, b"")
                elif self.path == "/metrics":
                    self._answer(200, engine.metrics.encode())
                else:
                    self._answer(404, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        return Handler
