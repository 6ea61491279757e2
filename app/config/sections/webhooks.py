"""Webhooks domain settings (``CONVEYOR_WEBHOOKS__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

DEFAULT_RETRY_SCHEDULE: list[float] = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
"""Delays before retries 1..7 (8 attempts over about 27 hours), as in Standard Webhooks/Svix."""


class WebhooksSettings(BaseModel):
    """Webhooks domain settings (``CONVEYOR_WEBHOOKS__*``)."""

    model_config = ConfigDict(extra="forbid")

    ssrf_allowlist: list[str] = Field(
        default_factory=list,
        max_length=100,
        description=(
            "Addresses, networks (127.0.0.0/8) or host names endpoints may reach even though"
            " they are internal; JSON list, e.g. CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST='[\"127.0.0.1\"]'."
        ),
    )
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE),
        min_length=0,
        max_length=50,
        description="Delay before each retry; attempts = len + 1, then the delivery is DEAD.",
    )
    retry_jitter: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of each delay drawn at random (1 = full jitter, 0 = exact schedule).",
    )
    max_retry_after_seconds: float = Field(
        default=86400.0,
        ge=0,
        le=7 * 86400,
        description="Longest Retry-After (429/503) honoured; longer values are capped.",
    )
    connect_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, description="TCP/TLS connect timeout of a delivery."
    )
    timeout_seconds: float = Field(
        default=15.0, gt=0, le=300, description="Read/write timeout of a delivery request."
    )
    breaker_failure_threshold: int = Field(
        default=10,
        ge=1,
        le=10000,
        description="Consecutive failed attempts that open an endpoint's circuit breaker.",
    )
    breaker_cooldown_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="How long an open breaker keeps deliveries PAUSED before a probe is sent.",
    )
    disable_after_seconds: float = Field(
        default=5 * 86400.0,
        gt=0,
        le=60 * 86400,
        description="An endpoint failing without a success for this long is disabled.",
    )
    secret_rotation_grace_seconds: float = Field(
        default=86400.0,
        ge=0,
        le=30 * 86400,
        description="After :rotateSecret the old secret still signs (second signature) this long.",
    )
    secret_encryption_key: SecretStr = Field(
        default=SecretStr(""),
        description="Key that encrypts signing secrets at rest. Required in prod (start-up stops"
        " without it); elsewhere, when unset, a random key is generated once in"
        " <data_dir>/webhook-secret-key.",
    )
    dispatch_batch_size: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="Deliveries of one event sent by one task (concurrently).",
    )
    max_event_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=4 * 1024 * 1024,
        description="Largest JSON payload of an event.",
    )
    max_concurrent_requests: int = Field(
        default=100, ge=1, le=10000, description="Open requests per worker process."
    )
    max_connections_per_endpoint: int = Field(
        default=10,
        ge=1,
        le=10000,
        description=(
            "Requests in flight per endpoint and worker process (over at most as many HTTP/1.1"
            " connections, or multiplexed over one HTTP/2 connection)."
        ),
    )
    http2: bool = Field(
        default=False,
        description=(
            "Offer HTTP/2 to HTTPS endpoints (ALPN): a receiver that accepts it gets an endpoint's"
            " requests multiplexed over one kept-alive connection; one that does not keeps"
            " HTTP/1.1. Plain http:// endpoints always use HTTP/1.1. Off by default: when a"
            " receiver ends an HTTP/2 connection (GOAWAY, as nginx and hypercorn do after 1,000"
            " requests), the requests in flight on it fail and wait for their retry (7 of 10"
            " measured), where HTTP/1.1 connections end between requests."
        ),
    )
    tls_ca_file: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "A PEM file of extra certificate authorities trusted for HTTPS endpoints (receivers"
            " behind a private CA), on top of certifi's bundle."
        ),
    )
    max_endpoint_pools: int = Field(
        default=256,
        ge=1,
        le=100000,
        description=(
            "Endpoints per worker process whose connections are kept alive (least recently"
            " used closed first)."
        ),
    )

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _check_schedule(cls, value: list[float]) -> list[float]:
        if any(delay < 0 or delay > 7 * 86400 for delay in value):
            raise ValueError("every retry delay must be between 0 and 604800 seconds")
        return value
