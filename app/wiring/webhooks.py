"""Wiring of the webhooks domain: endpoints, events, deliveries (queue and schema ``webhooks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

    from app.container import Container
    from app.workflows import Workflow
    from domains.operations.unit_of_work import SqlUnitOfWork

DOMAIN = "webhooks"
TASK_MODULES: list[str] = ["tasks.webhooks"]
# Never webhooks.* (our own delivery outcomes would loop back as deliveries).
SUBSCRIPTIONS: list[str] = ["imports.*"]


def uow_class() -> type[SqlUnitOfWork]:
    """Returns the webhooks unit of work class."""
    from domains.webhooks.unit_of_work import WebhooksUnitOfWork

    return WebhooksUnitOfWork


def build(container: Container) -> dict[str, Any]:
    """Builds the webhooks service.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        ``{"webhooks": WebhooksService}``.
    """
    from app.webhooks_http import HttpxSender, RedisRateLimiter
    from domains.shared.ssrf import UrlGuard
    from domains.webhooks.model import BreakerPolicy, RetryPolicy
    from domains.webhooks.ports import NoRateLimit, RateLimiter
    from domains.webhooks.service import WebhooksConfig, WebhooksService
    from domains.webhooks.signing import SecretBox

    settings = container.settings
    hooks = settings.webhooks
    broker = settings.broker_url or ""
    limiter: RateLimiter = (
        RedisRateLimiter(broker) if broker.startswith(("redis://", "rediss://")) else NoRateLimit()
    )
    config = WebhooksConfig(
        retry=RetryPolicy(
            schedule=tuple(hooks.retry_schedule_seconds),
            jitter=hooks.retry_jitter,
            max_retry_after=hooks.max_retry_after_seconds,
        ),
        breaker=BreakerPolicy(
            failure_threshold=hooks.breaker_failure_threshold,
            cooldown_seconds=hooks.breaker_cooldown_seconds,
            disable_after_seconds=hooks.disable_after_seconds,
            probe_lease_seconds=hooks.connect_timeout_seconds + hooks.timeout_seconds + 30,
        ),
        attempt_lease_seconds=hooks.connect_timeout_seconds + hooks.timeout_seconds + 30,
        secret_grace_seconds=hooks.secret_rotation_grace_seconds,
        batch_size=hooks.dispatch_batch_size,
        max_event_bytes=hooks.max_event_bytes,
        max_concurrent_requests=hooks.max_concurrent_requests,
        lease_seconds=settings.operation_lease_seconds,
        pending_deadline_seconds=settings.pending_deadline_seconds,
        progress_interval=settings.progress_interval_seconds,
    )
    service = WebhooksService(
        container.uow_factory(DOMAIN),  # type: ignore[arg-type]
        read_uow_factory=container.uow_factory(DOMAIN, role="replica"),  # type: ignore[arg-type]
        sender=HttpxSender(hooks),
        guard=UrlGuard.from_allowlist(hooks.ssrf_allowlist, "CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST"),
        box=SecretBox(settings.webhook_secret_key()),
        config=config,
        limiter=limiter,
    )
    return {"webhooks": service}


def routers() -> list[APIRouter]:
    """Returns the webhooks routers (endpoints, events, deliveries)."""
    from api.v1 import deliveries, endpoints, events

    return [endpoints.router, events.router, deliveries.router]


def workflows() -> list[Workflow]:
    """Returns the webhooks workflows a schedule can start (none: probes are a plain task)."""
    return []
