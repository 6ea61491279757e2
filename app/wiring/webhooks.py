"""Wiring of the webhooks domain: endpoints, events, deliveries (queue and schema ``webhooks``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from app.wiring.module import DomainModule
from domains.webhooks.service import WebhooksService
from domains.webhooks.tables import tables
from domains.webhooks.unit_of_work import WebhooksUnitOfWork

if TYPE_CHECKING:
    from app.config import Settings
    from app.container import Container
    from domains.platform.schedules.service import BuiltinSchedule


@dataclasses.dataclass(frozen=True)
class WebhooksServices:
    """The webhooks services (each is a container attribute of the same name).

    Attributes:
        webhooks: Endpoints, events and deliveries.
    """

    webhooks: WebhooksService


def build(container: Container) -> WebhooksServices:
    """Builds the webhooks service.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        The services.
    """
    from app.adapters.webhooks_http import HttpxSender, RedisRateLimiter
    from domains.shared.ssrf import UrlGuard
    from domains.webhooks.model import BreakerPolicy, RetryPolicy
    from domains.webhooks.ports import NoRateLimit, RateLimiter
    from domains.webhooks.service import WebhooksConfig
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
        container.unit_of_work(MODULE),
        read_uow_factory=container.unit_of_work(MODULE, role="replica"),
        sender=HttpxSender(hooks),
        guard=UrlGuard.from_allowlist(hooks.ssrf_allowlist, "CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST"),
        box=SecretBox(settings.webhook_secret_key()),
        config=config,
        limiter=limiter,
    )
    return WebhooksServices(webhooks=service)


def system_schedules(settings: Settings) -> list[BuiltinSchedule]:
    """Returns the webhooks system schedules: the circuit-breaker probes.

    Args:
        settings: Their initial intervals.

    Returns:
        The definitions.
    """
    from domains.platform.schedules.service import BuiltinSchedule

    return [
        BuiltinSchedule(
            id="system.webhook-breaker-probes",
            display_name="Webhook circuit-breaker probes",
            task="webhooks.probe_breakers",
            interval_seconds=settings.schedules.breaker_probe_interval_seconds,
        )
    ]


MODULE = DomainModule(
    name="webhooks",
    tables=tables,
    unit_of_work=WebhooksUnitOfWork,
    services=build,
    routers=("api.v1.endpoints", "api.v1.events", "api.v1.deliveries"),
    task_modules=("tasks.webhooks",),
    # Never webhooks.* (our own delivery outcomes would loop back as deliveries).
    subscriptions=("imports.*",),
    # No workflows: the breaker probes are a plain task.
    system_schedules=system_schedules,
)
"""The webhooks domain."""
