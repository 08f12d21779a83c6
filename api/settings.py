"""Process settings of the scheduler service (env ``TOPOSCHED_…``), built at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    kv_event_poll_ms: int = Field(default=500, gt=0, le=10_000,
                                  description="how long a replica blocks on the KV-event log")
    ui_interval_s: float = Field(
        default=1.0, ge=0.05, le=60,
        description="how often the operator's page (/ui) gets what changed, while one is open")
    shared_poll_s: float = Field(
        default=0.5, gt=0, le=60,
        description="how often a replica looks for topology and placement changes made "
                    "through other replicas (and publishes a running solve's progress)")
