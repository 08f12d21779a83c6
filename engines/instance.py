"""Engine instances: the serving processes toposched routes to, as operators declare them.

An :class:`EngineInstance` is one engine process (vLLM, SGLang, or toposched's fake)
serving one model in one role. Its ``name`` is its worker name everywhere in toposched
(router decisions, load, the prefix index, telemetry); a placement's instance id
(``h0/prefill-0``) may be used as the name so that the placement's pairings apply.
It sits on the fabric at ``host`` with local GPU indices ``gpus`` (what
``CUDA_VISIBLE_DEVICES`` lists), so its fabric GPUs are ``host/gpuN``.

Instances come from a versioned document (YAML or JSON; every error is reported with
its path, all at once)::

    version: 1
    instances:
      - name: h0/prefill-0
        engine: vllm
        role: prefill
        model: llama-3-8b
        base_url: http://10.0.0.5:8000        # OpenAI base, without /v1
        host: h0
        gpus: "0,1"                           # or [0, 1]
        tp_size: 2
        kv_events: {endpoint: "tcp://10.0.0.5:5557", replay_endpoint: "tcp://10.0.0.5:5558"}
        nixl_side_channel: 10.0.0.5:5600

or one at a time through ``PUT /v1/instances/{name}``, or announced by the sidecar
next to the engine. :func:`set_issues` checks what only a set of instances
shows: vLLM's NIXL side channel defaults to ``localhost``, which a decode engine on
another host cannot reach (ENGINES.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from topology.documents import parse_document, read_text, validate
from topology.errors import Issue, ValidationError

#: Versions of the instance document this code reads.
DOCUMENT_VERSION: Literal[1] = 1
EngineKind = Literal["vllm", "sglang", "fake"]
Role = Literal["prefill", "decode", "both"]
#: Worker names: placement instance ids (``h0/prefill-0``) are allowed.
InstanceName = Annotated[str, Field(min_length=1, max_length=256,
                                    pattern=r"^[A-Za-z0-9_.:@/-]+$")]
#: vLLM's NIXL side channel when ``VLLM_NIXL_SIDE_CHANNEL_HOST``/``_PORT`` are unset.
VLLM_DEFAULT_SIDE_CHANNEL = "localhost:5600"
_EXPECTED = "an engine instance document (version: 1, instances: [...])"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


@lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``;
    remembered per name: the gateway asks for each pair it routes)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host_port(value: str) -> tuple[str, int]:
    """``"10.0.0.5:5600"`` / ``"[::1]:5600"`` → host and port; ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port with a port in 1..65535")
    if ":" in host and not host.startswith("["):
        raise ValueError("an IPv6 host must be written in brackets: [::1]:5600")
    return host.strip("[]"), int(port)


class KvEventsEndpoint(_Frozen):
    """Where an engine's KV events come from (its ``--kv-events-config``).

    ``connect`` (default): toposched subscribes to the engine's bound publisher at
    ``endpoint`` (``tcp://10.0.0.5:5557``). ``bind``: the engine's publisher connects to
    the socket toposched binds itself (one for all engines, ``TOPOSCHED_KV_EVENTS_BIND``);
    its events are told apart by ``topic``, which must then be unique. The replay
    endpoint is the engine's ROUTER socket, used to fetch batches lost in a gap.
    """

    endpoint: str | None = Field(default=None, max_length=512)
    replay_endpoint: str | None = Field(default=None, max_length=512)
    topic: str = Field(default="", max_length=512)
    mode: Literal["connect", "bind"] = "connect"

    @field_validator("endpoint", "replay_endpoint")
    @classmethod
    def _zmq_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError("must be a ZMQ address (tcp://host:port, ipc://path)")
        if value.startswith("tcp://") and "*" in value:
            raise ValueError("must name the engine's host, not '*' (the engine binds '*')")
        return value

    @model_validator(mode="after")
    def _endpoint_for_connect(self) -> KvEventsEndpoint:
        if self.mode == "connect" and self.endpoint is None:
            raise ValueError("endpoint is required in connect mode")
        return self


def _gpu_list(value: Any) -> Any:
    """``"0,1"`` (as ``CUDA_VISIBLE_DEVICES`` says it) or ``[0, 1]``."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not all(part.isdigit() for part in parts):
            raise ValueError("must be GPU indices: a list or a comma-separated string '0,1'")
        return [int(part) for part in parts]
    return value


class EngineInstance(_Frozen):
    """One serving engine process and how to reach it (see the module docstring)."""

    name: InstanceName
    engine: EngineKind
    role: Role
    model: str = Field(min_length=1, max_length=256)
    base_url: str = Field(max_length=1024, description="OpenAI base URL without /v1")
    host: str = Field(min_length=1, max_length=256, description="fabric host name")
    gpus: tuple[Annotated[int, Field(ge=0, le=1023, strict=True)], ...] = Field(
        min_length=1, max_length=1024, description="local GPU indices on host")
    tp_size: int = Field(default=1, ge=1, le=1024, strict=True)
    dp_size: int = Field(default=1, ge=1, le=1024, strict=True)
    kv_events: KvEventsEndpoint | None = None
    nixl_side_channel: str | None = Field(
        default=None, max_length=300,
        description="vLLM: VLLM_NIXL_SIDE_CHANNEL_HOST:PORT (default localhost:5600)")
    bootstrap_port: int | None = Field(default=None, ge=1, le=65535, strict=True,
                                       description="SGLang: --disaggregation-bootstrap-port")
    block_size: int | None = Field(default=None, ge=1, le=1 << 20, strict=True,
                                   description="tokens per KV block; learned from "
                                               "/metrics when absent")
    max_requests: int | None = Field(default=None, ge=1, le=1 << 20, strict=True,
                                     description="concurrent requests it takes")
    dtype: str | None = Field(default=None, max_length=64)
    engine_version: str | None = Field(default=None, max_length=64)

    _gpus_from_string = field_validator("gpus", mode="before")(_gpu_list)

    @field_validator("gpus")
    @classmethod
    def _distinct(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat a GPU index")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://10.0.0.5:8000")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        trimmed = value.rstrip("/")
        if trimmed.endswith("/v1"):
            raise ValueError("must be the base without /v1 (toposched adds /v1/...)")
        return trimmed

    @field_validator("nixl_side_channel")
    @classmethod
    def _side_channel(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _engine_fields(self) -> EngineInstance:
        if self.engine == "sglang" and self.nixl_side_channel is not None:
            raise ValueError("nixl_side_channel is a vLLM setting; SGLang uses bootstrap_port")
        if self.engine == "vllm" and self.bootstrap_port is not None:
            raise ValueError("bootstrap_port is an SGLang setting; vLLM uses nixl_side_channel")
        return self

    @property
    def gpu_names(self) -> tuple[str, ...]:
        """Fabric-wide names of its GPUs (``host/gpuN``)."""
        return tuple(f"{self.host}/gpu{index}" for index in self.gpus)

    @property
    def side_channel(self) -> tuple[str, int] | None:
        """vLLM's NIXL side channel (host, port), vLLM's default when not given."""
        if self.engine != "vllm":
            return None
        return split_host_port(self.nixl_side_channel or VLLM_DEFAULT_SIDE_CHANNEL)

    @property
    def can_prefill(self) -> bool:
        """Whether it runs prefills."""
        return self.role != "decode"

    @property
    def can_decode(self) -> bool:
        """Whether it runs decodes."""
        return self.role != "prefill"


class InstanceDocument(_Frozen):
    """The versioned document that declares engine instances (names unique)."""

    version: Literal[1]
    instances: tuple[EngineInstance, ...] = Field(default=(), max_length=100_000)


def set_issues(instances: Sequence[EngineInstance],
               path: Iterable[str] | None = None) -> list[Issue]:
    """Problems only the whole set shows, each under ``path[i]`` of the offending instance
    (default ``instances[i]``):

    * a name declared twice;
    * a vLLM instance whose NIXL side channel is a loopback address (vLLM's default is
      ``localhost``) while a vLLM instance of the other role serving the same model runs
      on another host: that peer cannot reach it;
    * two instances in ``bind`` mode with the same KV-event topic (their events could not
      be told apart).
    """
    names = list(path) if path is not None else [f"instances[{i}]"
                                                 for i in range(len(instances))]
    issues = [Issue(f"{names[i]}.name", message)
              for i, message in _duplicate_names(instances)]
    issues += [Issue(f"{names[i]}.nixl_side_channel", message)
               for i, message in _side_channel_problems(instances)]
    issues += [Issue(f"{names[i]}.kv_events.topic", message)
               for i, message in _topic_problems(instances)]
    return issues


def _duplicate_names(instances: Sequence[EngineInstance]) -> list[tuple[int, str]]:
    first: dict[str, int] = {}
    found: list[tuple[int, str]] = []
    for i, instance in enumerate(instances):
        earlier = first.setdefault(instance.name, i)
        if earlier != i:
            found.append((i, f"{instance.name!r} is declared twice (also at [{earlier}])"))
    return found


def _side_channel_problems(instances: Sequence[EngineInstance]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for i, instance in enumerate(instances):
        channel = instance.side_channel
        if channel is None or not is_loopback(channel[0]):
            continue
        peer = next((other for other in instances if _remote_peer(instance, other)), None)
        if peer is not None:
            found.append((i, f"{channel[0]!r} is not reachable from {peer.name!r} on host "
                             f"{peer.host!r}; set VLLM_NIXL_SIDE_CHANNEL_HOST to an address "
                             f"of {instance.host!r} and declare it here"))
    return found


def _remote_peer(instance: EngineInstance, other: EngineInstance) -> bool:
    """Whether ``other`` is a vLLM P/D partner of ``instance`` on another host."""
    partners = (instance.can_prefill and other.can_decode) or \
        (instance.can_decode and other.can_prefill)
    return (other.engine == "vllm" and other.name != instance.name and partners
            and other.model == instance.model and other.host != instance.host)


def _topic_problems(instances: Sequence[EngineInstance]) -> list[tuple[int, str]]:
    owners: dict[str, str] = {}
    found: list[tuple[int, str]] = []
    for i, instance in enumerate(instances):
        events = instance.kv_events
        if events is None or events.mode != "bind":
            continue
        owner = owners.setdefault(events.topic, instance.name)
        if owner != instance.name:
            found.append((i, f"topic {events.topic!r} is also {owner!r}'s: in bind mode "
                             "each engine needs its own topic"))
    return found


def parse_instances(data: Any, source: str = "<instances>") -> InstanceDocument:
    """Validate a decoded instance document; field and set problems raised together."""
    document = validate(InstanceDocument, data, source)
    issues = set_issues(document.instances)
    if issues:
        raise ValidationError(source, issues)
    return document


def parse_instances_text(text: str, source: str = "<instances>") -> InstanceDocument:
    """Parse and validate an instance document from YAML (or JSON) text."""
    return parse_instances(parse_document(text, source, _EXPECTED), source)


def load_instances(path: str | Path) -> InstanceDocument:
    """Read and validate an instance document file (YAML, or JSON by suffix)."""
    text = read_text(path, _EXPECTED)
    as_json = str(path).lower().endswith(".json")
    return parse_instances(parse_document(text, str(path), _EXPECTED, as_json=as_json),
                           str(path))
