"""Webhooks use cases: endpoints, event fan-out, delivery attempts, retries, breaker, replay.

Called by the API (endpoints, events, deliveries, replay) and by the ``webhooks.*`` tasks
(deliver, handle_event, replay, probe_endpoint, probe_breakers). Deliveries are rows in
PostgreSQL; each attempt is dispatched through the outbox, and a retry is an outbox row whose
``available_time`` is the next attempt time (no long broker countdowns).
"""

from domains.webhooks.service.base import (
    DELIVER_TASK,
    DOMAIN,
    PROBE_TASK,
    REPLAY_TASK,
    UNSET,
    USER_AGENT,
    Page,
    ServiceBase,
    WebhooksConfig,
)
from domains.webhooks.service.endpoints import EndpointsPart
from domains.webhooks.service.fanout import FanOutPart, PublishedEvent
from domains.webhooks.service.reads import ReadsPart
from domains.webhooks.service.replay import ReplayPart
from domains.webhooks.service.sending import SendingPart
from domains.webhooks.service.upkeep import UpkeepPart

__all__ = [
    "DELIVER_TASK",
    "DOMAIN",
    "PROBE_TASK",
    "REPLAY_TASK",
    "UNSET",
    "USER_AGENT",
    "Page",
    "PublishedEvent",
    "WebhooksConfig",
    "WebhooksService",
]


class WebhooksService(
    EndpointsPart, FanOutPart, SendingPart, UpkeepPart, ReadsPart, ReplayPart, ServiceBase
):
    """Endpoints, events, deliveries and replays of the webhooks domain.

    Each section of the use cases lives in its own module (``endpoints``, ``fanout``,
    ``sending``, ``upkeep``, ``reads``, ``replay``); the constructor, the shared state and the
    helpers several sections use are in ``base``.
    """
