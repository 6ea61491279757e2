"""Integration events: how domains tell each other what happened, through their outboxes.

A domain writes an event to its own outbox (in the transaction of the change) with
:func:`event_message`. The outbox publisher fans it out to every subscribing domain's
``<domain>.handle_event`` task on that domain's queue (subscriptions live in the composition
root, so an emitter never knows its consumers). Delivery is at least once: consumers apply an
event id once (store the ids they applied).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from domains.shared.clock import utcnow
from domains.shared.ids import new_id
from domains.shared.outbox import OutboxMessage

EVENT_TASK = "conveyor.event"
"""Outbox task name of an integration event (the publisher fans it out, never sends it as is)."""


@dataclasses.dataclass(frozen=True)
class IntegrationEvent:
    """A fact one domain publishes for others.

    Attributes:
        type: ``<domain>.<PastTenseName>``, e.g. ``imports.ImportCompleted``.
        data: JSON payload (ids and figures; never secrets).
        source: Emitting domain.
        tenant: Tenant of the resource the event is about.
        id: Event id (consumers dedupe on it).
        time: When it happened.
    """

    type: str
    data: Mapping[str, Any]
    source: str
    tenant: str = "default"
    id: uuid.UUID = dataclasses.field(default_factory=new_id)
    time: dt.datetime = dataclasses.field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON envelope carried in task kwargs.

        Returns:
            ``{"id", "type", "source", "tenant", "time", "data"}``.
        """
        return {
            "id": str(self.id),
            "type": self.type,
            "source": self.source,
            "tenant": self.tenant,
            "time": self.time.isoformat(),
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, envelope: Mapping[str, Any]) -> IntegrationEvent:
        """Parses an envelope made by :meth:`to_dict`.

        Args:
            envelope: The envelope.

        Returns:
            The event.
        """
        return cls(
            type=str(envelope["type"]),
            data=dict(envelope.get("data") or {}),
            source=str(envelope.get("source", "")),
            tenant=str(envelope.get("tenant", "default")),
            id=uuid.UUID(str(envelope["id"])),
            time=dt.datetime.fromisoformat(str(envelope["time"])),
        )


def event_message(event: IntegrationEvent, *, correlation_id: str | None = None) -> OutboxMessage:
    """Returns the outbox row that publishes ``event`` (add it in the change's transaction).

    Args:
        event: The event.
        correlation_id: Request id to carry into consumers' logs.

    Returns:
        The outbox message (queue = the source domain; the publisher fans it out).
    """
    return OutboxMessage(
        task_name=EVENT_TASK,
        queue=event.source,
        args=[],
        kwargs={"event": event.to_dict()},
        task_id=f"event-{event.id}",
        headers={"correlation_id": correlation_id or ""},
    )


def handler_task_name(domain: str) -> str:
    """Returns the task that consumes integration events in ``domain``.

    Args:
        domain: Subscriber domain.

    Returns:
        ``<domain>.handle_event``.
    """
    return f"{domain}.handle_event"
