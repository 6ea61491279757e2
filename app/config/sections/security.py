"""API keys, limits and docs exposure (``CONVEYOR_SECURITY__*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class SecuritySettings(BaseModel):
    """API keys, limits and docs exposure (``CONVEYOR_SECURITY__*``)."""

    model_config = ConfigDict(extra="forbid")

    auth_required: bool = Field(
        default=True,
        description="Every /v1 route needs an API key (Authorization: Bearer cvk_...). Turn off"
        " only for local experiments: every caller is then the all-scopes tenant 'default'.",
    )
    docs_enabled: bool = Field(
        default=True,
        description="Serve /docs, /redoc and /openapi.json; set false in production to hide them.",
    )
    key_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        le=30,
        description="How long an API key lookup is cached in each API process; a revoked key"
        " stops working within this many seconds.",
    )
    rate_limit_enabled: bool = Field(
        default=True, description="Per-API-key token bucket in Redis (429 + Retry-After)."
    )
    rate_limit_per_second: float = Field(
        default=50.0,
        gt=0,
        le=1_000_000,
        description="Tokens each key gets back per second (sustained requests per second).",
    )
    rate_limit_burst: int = Field(
        default=200,
        ge=1,
        le=10_000_000,
        description="Bucket size: requests a key may send at once after being idle.",
    )
    rate_limit_redis_url: str | None = Field(
        default=None,
        max_length=2000,
        description="Redis for the rate-limit buckets; default the broker (or result backend)"
        " when it is Redis, else an in-process bucket per API process.",
    )
    console_enabled: bool = Field(
        default=True,
        description="Serve the operations console at /console (sign-in with an API key; it calls"
        " the /v1 routes with that key).",
    )
    console_session_secret: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC key signing console session cookies (the same value on every API"
        " process); empty derives one from CONVEYOR_PAGE_TOKEN_SECRET.",
    )
    console_session_max_age_seconds: int = Field(
        default=8 * 3600,
        ge=60,
        le=30 * 86400,
        description="A console sign-in lasts this long.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body of a JSON route, in bytes (413 above).",
    )
    max_upload_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        le=16 * 1024 * 1024 * 1024,
        description="Largest request body of an upload route (file uploads), in bytes; the"
        " smaller of this and CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES applies (413 above, at once"
        " when Content-Length declares more).",
    )
    uvicorn_timeout_keep_alive_seconds: int = Field(
        default=5,
        ge=1,
        le=300,
        description="uvicorn closes an idle keep-alive connection after this many seconds.",
    )
    uvicorn_limit_concurrency: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="uvicorn answers 503 beyond this many concurrent connections/tasks, so slow"
        " clients cannot exhaust the process.",
    )
    uvicorn_backlog: int = Field(
        default=2048, ge=16, le=65535, description="Listen backlog of the API socket."
    )
    uvicorn_h11_max_incomplete_event_size: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line + headers uvicorn buffers, in bytes (oversized headers"
        " are refused).",
    )
    uvicorn_http: Literal["h11", "httptools"] = Field(
        default="httptools",
        description="HTTP parser: httptools (C, faster) or h11 (pure Python); both refuse a"
        " request line + headers over uvicorn_h11_max_incomplete_event_size.",
    )
    uvicorn_timeout_graceful_shutdown_seconds: int = Field(
        default=30,
        ge=1,
        le=600,
        description="On SIGTERM, uvicorn waits this long for in-flight requests (long polls).",
    )
