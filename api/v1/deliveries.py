"""Deliveries (one event for one endpoint) and their attempts; manual retry."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, require_scope
from api.deps import WebhooksDep, request_id
from api.errors import ERROR_RESPONSES
from domains.shared.ids import parse_id
from domains.webhooks.model import Attempt, Delivery

router = APIRouter(prefix="/v1/deliveries", tags=["webhooks"], responses=ERROR_RESPONSES)

_ENDPOINT = "019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d"
_DELIVERY = "019a8f0e-9a00-7c3e-8c55-3f1f9e0a1b2e"


class DeliveryOut(BaseModel):
    """A delivery: one event for one endpoint. Its id is the ``webhook-id`` header."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": f"endpoints/{_ENDPOINT}/deliveries/{_DELIVERY}",
                "id": _DELIVERY,
                "endpoint": f"endpoints/{_ENDPOINT}",
                "event_id": "019a8f0e-9900-7c3e-8c55-3f1f9e0a1b2f",
                "event_type": "imports.ImportCompleted",
                "state": "SUCCEEDED",
                "attempts": 1,
                "next_attempt_time": None,
                "last_status_code": 200,
                "last_error": None,
                "create_time": "2026-11-25T12:00:00Z",
                "update_time": "2026-11-25T12:00:01Z",
                "end_time": "2026-11-25T12:00:01Z",
            }
        }
    )

    name: str = Field(description="endpoints/{endpoint}/deliveries/{id}")
    id: str = Field(description="Delivery id, sent as the webhook-id header (dedupe on it).")
    endpoint: str
    event_id: str
    event_type: str
    state: str = Field(description="PENDING, SENDING, SUCCEEDED, FAILED, DEAD or PAUSED.")
    attempts: int
    next_attempt_time: dt.datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    create_time: dt.datetime
    update_time: dt.datetime
    end_time: dt.datetime | None = None


class AttemptOut(BaseModel):
    """One HTTP attempt of a delivery."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "attempt": 1,
                "time": "2026-11-25T12:00:00Z",
                "status_code": 503,
                "duration_ms": 41.7,
                "response_body": "upstream unavailable",
                "error": None,
            }
        }
    )

    attempt: int
    time: dt.datetime
    status_code: int | None = Field(default=None, description="None when no response came.")
    duration_ms: float
    response_body: str = Field(description="First 4 KB of the response body.")
    error: str | None = Field(default=None, description="Timeout, connection error, refusal.")


def delivery_out(delivery: Delivery) -> dict[str, Any]:
    """Renders a delivery.

    Args:
        delivery: The delivery.

    Returns:
        Its JSON resource.
    """
    return {
        "name": delivery.name(),
        "id": str(delivery.id),
        "endpoint": f"endpoints/{delivery.endpoint_id}",
        "event_id": str(delivery.event_id),
        "event_type": delivery.event_type,
        "state": str(delivery.state),
        "attempts": delivery.attempts,
        "next_attempt_time": delivery.next_attempt_time,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "create_time": delivery.create_time,
        "update_time": delivery.update_time,
        "end_time": delivery.end_time,
    }


def attempt_out(attempt: Attempt) -> dict[str, Any]:
    """Renders an attempt.

    Args:
        attempt: The attempt.

    Returns:
        Its JSON form.
    """
    return {
        "attempt": attempt.attempt,
        "time": attempt.time,
        "status_code": attempt.status_code,
        "duration_ms": attempt.duration_ms,
        "response_body": attempt.response_body,
        "error": attempt.error,
    }


@router.get("/{delivery_id}", response_model=DeliveryOut, summary="Get a delivery")
async def get_delivery(
    delivery_id: str,
    svc: WebhooksDep,
    caller: Annotated[Principal, Depends(require_scope("webhooks:read"))],
) -> Any:
    """Returns a delivery by id (its `webhook-id`)."""
    delivery = await svc.get_delivery(caller.tenant, parse_id(delivery_id, what="delivery id"))
    return delivery_out(delivery)


@router.post("/{delivery_id}:retry", response_model=DeliveryOut, summary="Retry a delivery")
async def retry_delivery(
    delivery_id: str,
    svc: WebhooksDep,
    caller: Annotated[Principal, Depends(require_scope("webhooks:write"))],
    correlation: Annotated[str | None, Depends(request_id)],
) -> Any:
    """Sends a FAILED or DEAD delivery again with a fresh retry schedule (same `webhook-id`)."""
    delivery = await svc.retry_delivery(
        caller.tenant, parse_id(delivery_id, what="delivery id"), correlation_id=correlation
    )
    return delivery_out(delivery)
