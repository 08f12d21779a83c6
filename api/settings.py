"""Process settings of the scheduler service (env ``TOPOSCHED_…``), built at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of one ``toposched serve`` process; every field has an env variable.

    E.g. ``TOPOSCHED_TRANSFER_MODE=WRITE`` makes prefill sidecars push (SGLang style).
    """

    model_config = SettingsConfigDict(env_prefix="TOPOSCHED_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    transfer_mode: Literal["READ", "WRITE"] = Field(
        default="READ", description="READ: decode pulls (vLLM); WRITE: prefill pushes")
    lease_ttl_s: float = Field(default=10.0, gt=0, le=3600)
    transfer_deadline_s: float = Field(default=10.0, gt=0, le=3600)
    reservation_ttl_s: float = Field(
        default=600.0, gt=0, le=86_400,
        description="a route's load reservation ends after this long unless renewed or "
                    "released first (POST /v1/reservations/{id}/renew | release)")
    replica_lease_ttl_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a replica renews its lease every expire_interval_s; once it lapses "
                    "(the replica died) the others close the reservations it made")
    long_poll_max_s: float = Field(default=30.0, gt=0, le=300)
    expire_interval_s: float = Field(default=0.5, gt=0, le=60)
    calibrate_interval_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="how often measured transfer figures are fed into the router's costs")
    fabric: Path | None = Field(default=None, description="fabric document for tiers/NICs")
    redis_url: str | None = Field(
        default=None, description="share state with other replicas through this Redis "
                                  "(redis://host:port/db); in-memory when unset")
    redis_prefix: str = Field(default="toposched:", min_length=1, max_length=64)
    worker_token: SecretStr | None = Field(default=None,
                                           description="bearer token of sidecars/workers")
    operator_token: SecretStr | None = Field(default=None,
                                             description="bearer token of operators")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0,
                                description="larger request bodies get 413")
    body_timeout_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a request body must arrive within this time from its first read (408)")
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="a connection must send a request's headers within this time (closed)")
    max_connections: int | None = Field(
        default=None, ge=1,
        description="concurrent connections and requests beyond which the server answers "
                    "503 (uvicorn's limit_concurrency; every sidecar holds one long-poll)")
    kv_event_poll_ms: int = Field(default=500, gt=0, le=10_000,
                                  description="how long a replica blocks on the KV-event log")
    policy: str = Field(default="fabric-cost", min_length=1,
                        description="routing policy: a packaged name or a policy document path")
    plugins: str | None = Field(
        default=None, description="entry points of group toposched.policies that may load, "
                                  "comma-separated (unset: every installed one; empty: none)")
    block_tokens: int = Field(
        default=16, ge=1, le=1 << 16,
        description="tokens per KV block of a model whose workers register no block size "
                    "(vLLM's default is 16)")
    model_block_tokens: dict[str, Annotated[int, Field(ge=1, le=1 << 16)]] = Field(
        default_factory=dict, description='per-model block sizes, JSON: {"llama-3-70b": 32}')
    prefix_approx_ttl_s: float | None = Field(
        default=None, gt=0, le=86_400,
        description="approximate prefix mode: count each routed request's blocks as cached "
                    "on the chosen workers for this long (engines without KV events)")
    prefill_cache_ttl_s: float = Field(
        default=300.0, ge=0, le=86_400,
        description="after a disaggregated route, count the prompt's blocks as cached on "
                    "the prefill worker (which computed them) for this long; 0: never")
    ui_interval_s: float = Field(
        default=1.0, ge=0.05, le=60,
        description="how often the operator's page (/ui) gets what changed, while one is open")
    shared_poll_s: float = Field(
        default=0.5, gt=0, le=60,
        description="how often a replica looks for topology and placement changes made "
                    "through other replicas (and publishes a running solve's progress)")

    # -- engine instances (engines/: health, /metrics, KV events) ----------------------
    instances: Path | None = Field(
        default=None, description="engine instance document (YAML/JSON, version 1) "
                                  "registered at start-up unless the store holds instances")
    engine_scrape_interval_s: float = Field(
        default=1.0, ge=0.01, le=300,
        description="how often each engine's /health and /metrics are read")
    engine_scrape_timeout_s: float = Field(default=2.0, gt=0, le=60)
    engine_stale_after_s: float | None = Field(
        default=None, gt=0, le=3600,
        description="an engine whose /health has not answered for this long leaves "
                    "routing (default: the worker lease, lease_ttl_s)")
    kv_events_bind: str | None = Field(
        default=None, max_length=512,
        description="ZMQ address of the one bound SUB socket that engines in kv_events "
                    "bind mode connect to (e.g. tcp://*:5557)")
    # -- the OpenAI-compatible P/D gateway (``toposched gateway``) ---------------------
    gateway: bool = Field(default=False, description="serve /v1/completions, "
                          "/v1/chat/completions and /v1/models in front of the engines")
    tokenizer: Path | None = Field(
        default=None, description="directory (or tokenizer.json) of the model's tokenizer: "
                                  "prompts are tokenized here for prefix routing instead of "
                                  "by the engine's /tokenize")
    pd_min_uncached_tokens: int = Field(
        default=256, ge=0, le=1 << 24,
        description="disaggregate only when the decode engine lacks at least this many "
                    "prompt tokens; fewer and it computes them itself (0: always)")
    prefix_pull: bool = Field(
        default=True,
        description="gateway only (on by default): let the router have a prefill engine "
                    "copy a cached prefix from the engine holding it instead of "
                    "recomputing it (CostParams.prefix_pull); the gateway runs the copy for "
                    "vLLM engines (docs/gateway.md). toposched serve never plans pulls: "
                    "nothing there executes them")
    pull_overhead_s: float | None = Field(
        default=None, ge=0, le=60,
        description="gateway only: pin a prefix pull's fixed cost (seconds) on top of its "
                    "fabric time (CostParams.pull_overhead_s); unset: the gateway learns it "
                    "from the pulls it runs (docs/gateway.md)")
    kv_lease_s: float = Field(default=30.0, gt=0, le=3600,
                              description="the engines' kv_lease_duration: how long a "
                                          "prefill keeps KV for its decode leg")
    engine_connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    engine_read_timeout_s: float = Field(
        default=600.0, gt=0, le=86400,
        description="longest silence of an engine within one leg before it counts as hung")
    engine_api_key: SecretStr | None = Field(default=None,
                                             description="bearer token sent to the engines")
    client_token: SecretStr | None = Field(
        default=None, description="bearer token clients must send to the OpenAI endpoints "
                                  "(open when unset)")

