"""The integration events reports consume, turned into projection deltas.

Contracts (the emitting domains send exactly these ``data`` fields):

- ``imports.ImportCompleted``: ``dataset_id, dataset, [dataset_display_name], import_id,
  import, operation, rows_total, rows_accepted, rows_rejected, completed_time``
- ``imports.ImportFailed``: ``dataset_id, dataset, [dataset_display_name], import_id, import,
  operation, error``
- ``webhooks.DeliverySucceeded``: ``endpoint_id, endpoint, delivery_id, event_type, attempts,
  latency_ms, status_code``
- ``webhooks.DeliveryFailed`` / ``webhooks.DeliveryDead``: ``endpoint_id, endpoint,
  delivery_id, event_type, attempts, status_code (or null), error``

Every delta is counted on the UTC day of the event's ``time``. Other event types map to no
delta (ignored).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from domains.shared.errors import InvalidArgument
from domains.shared.events import IntegrationEvent

IMPORT_COMPLETED = "imports.ImportCompleted"
IMPORT_FAILED = "imports.ImportFailed"
DELIVERY_SUCCEEDED = "webhooks.DeliverySucceeded"
DELIVERY_FAILED = "webhooks.DeliveryFailed"
DELIVERY_DEAD = "webhooks.DeliveryDead"

HANDLED_TYPES = frozenset(
    {IMPORT_COMPLETED, IMPORT_FAILED, DELIVERY_SUCCEEDED, DELIVERY_FAILED, DELIVERY_DEAD}
)
"""Event types that change a projection."""

MAX_NAME_LENGTH = 300
"""Longest id or display name kept from an event."""


class MalformedEvent(InvalidArgument):
    """An event of a known type lacks a field of its contract (retrying cannot fix it)."""

    default_reason = "MALFORMED_EVENT"


@dataclasses.dataclass(frozen=True)
class DatasetDelta:
    """What one import event adds to a dataset's day.

    Attributes:
        tenant: Tenant.
        dataset_id: Dataset id.
        dataset: Dataset display name.
        day: UTC day.
        imports_completed: 1 for ImportCompleted.
        imports_failed: 1 for ImportFailed.
        rows_total: Rows read.
        rows_accepted: Rows accepted.
        rows_rejected: Rows rejected.
    """

    tenant: str
    dataset_id: str
    dataset: str
    day: dt.date
    imports_completed: int = 0
    imports_failed: int = 0
    rows_total: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0


@dataclasses.dataclass(frozen=True)
class EndpointDelta:
    """What one delivery event adds to an endpoint's day.

    Attributes:
        tenant: Tenant.
        endpoint_id: Endpoint id.
        endpoint: Endpoint display name.
        day: UTC day.
        succeeded: 1 for DeliverySucceeded.
        failed: 1 for DeliveryFailed.
        dead: 1 for DeliveryDead.
        latency_ms: Latency sample of a successful delivery.
    """

    tenant: str
    endpoint_id: str
    endpoint: str
    day: dt.date
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    latency_ms: float | None = None


Delta = DatasetDelta | EndpointDelta


def parse_envelope(envelope: Mapping[str, Any]) -> IntegrationEvent:
    """Parses the JSON envelope a ``handle_event`` task receives.

    Args:
        envelope: ``IntegrationEvent.to_dict()`` output.

    Returns:
        The event (its time is made timezone-aware UTC).

    Raises:
        MalformedEvent: If the envelope lacks an id, type or time, or they do not parse.
    """
    if not isinstance(envelope, Mapping):
        raise MalformedEvent(f"an event must be a JSON object (got {type(envelope).__name__})")
    try:
        event = IntegrationEvent.from_dict(envelope)
    except (KeyError, ValueError, TypeError) as exc:
        raise MalformedEvent(f"event envelope is malformed: {type(exc).__name__}: {exc}") from None
    if event.time.tzinfo is None:
        event = dataclasses.replace(event, time=event.time.replace(tzinfo=dt.UTC))
    return event


def _text(data: Mapping[str, Any], key: str, event: IntegrationEvent) -> str:
    value = data.get(key)
    if value is None or isinstance(value, dict | list) or str(value) == "":
        raise MalformedEvent(f"{event.type} {event.id}: data.{key} is missing")
    return str(value)[:MAX_NAME_LENGTH]


def _count(data: Mapping[str, Any], key: str, event: IntegrationEvent) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(
            f"{event.type} {event.id}: data.{key} must be a non-negative integer (got {value!r})"
        )
    return value


def _latency(data: Mapping[str, Any], event: IntegrationEvent) -> float | None:
    value = data.get("latency_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedEvent(f"{event.type} {event.id}: data.latency_ms must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise MalformedEvent(f"{event.type} {event.id}: data.latency_ms must be >= 0")
    return number


def to_delta(event: IntegrationEvent) -> Delta | None:
    """Maps an event onto the projection change it makes.

    Args:
        event: A parsed event.

    Returns:
        The delta, or ``None`` for a type reports do not tally.

    Raises:
        MalformedEvent: If a field of the event's contract is missing or of the wrong type.
    """
    data = event.data
    day = event.time.astimezone(dt.UTC).date()
    if event.type in (IMPORT_COMPLETED, IMPORT_FAILED):
        dataset_id = _text(data, "dataset_id", event)
        imports = DatasetDelta(
            tenant=event.tenant,
            dataset_id=dataset_id,
            # The display name when the event carries one (events from before it: the name).
            dataset=str(data.get("dataset_display_name") or data.get("dataset") or dataset_id)[
                :MAX_NAME_LENGTH
            ],
            day=day,
        )
        if event.type == IMPORT_FAILED:
            return dataclasses.replace(imports, imports_failed=1)
        accepted = _count(data, "rows_accepted", event)
        rejected = _count(data, "rows_rejected", event)
        total = data.get("rows_total")
        return dataclasses.replace(
            imports,
            imports_completed=1,
            rows_total=accepted + rejected if total is None else _count(data, "rows_total", event),
            rows_accepted=accepted,
            rows_rejected=rejected,
        )
    if event.type in (DELIVERY_SUCCEEDED, DELIVERY_FAILED, DELIVERY_DEAD):
        endpoint_id = _text(data, "endpoint_id", event)
        delivery = EndpointDelta(
            tenant=event.tenant,
            endpoint_id=endpoint_id,
            endpoint=str(data.get("endpoint") or endpoint_id)[:MAX_NAME_LENGTH],
            day=day,
        )
        if event.type == DELIVERY_SUCCEEDED:
            return dataclasses.replace(delivery, succeeded=1, latency_ms=_latency(data, event))
        if event.type == DELIVERY_FAILED:
            return dataclasses.replace(delivery, failed=1)
        return dataclasses.replace(delivery, dead=1)
    return None


def latency_bucket(ms: float) -> float:
    """Rounds a latency sample to 3 significant digits (within 0.5%), the resolution the
    reports keep: it bounds the distinct values of an endpoint-day to a few thousand.

    Args:
        ms: The sample in milliseconds (>= 0).

    Returns:
        The rounded sample.
    """
    return float(f"{ms:.3g}")
