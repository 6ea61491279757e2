"""Events: operators publish a custom event to every matching webhook endpoint."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import authorize
from api.deps import container, correlation_id
from api.errors import ERROR_RESPONSES
from api.v1.schemas import RequestIdQuery, request_id_field

router = APIRouter(prefix="/v1/events", tags=["webhooks"], responses=ERROR_RESPONSES)


class PublishEventRequest(BaseModel):
    """Body of ``POST /v1/events``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"type": "orders.Created", "data": {"order": "o-42"}}},
    )

    type: str = Field(
        min_length=1,
        max_length=200,
        description="Dotted event type, e.g. orders.Created (webhooks.* is reserved).",
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description="JSON payload, sent as `data` (at most 256 KB)."
    )
    request_id: str | None = request_id_field()


class EventOut(BaseModel):
    """A published event."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "events/019a8f0e-9900-7c3e-8c55-3f1f9e0a1b2f",
                "id": "019a8f0e-9900-7c3e-8c55-3f1f9e0a1b2f",
                "type": "orders.Created",
                "time": "2026-11-25T12:00:00Z",
                "deliveries": 2,
            }
        }
    )

    name: str
    id: str
    type: str
    time: dt.datetime
    deliveries: int = Field(description="Deliveries created, one per matching endpoint.")


@router.post("", response_model=EventOut, summary="Publish an event")
async def publish_event(
    body: PublishEventRequest,
    request: Request,
    request_id_param: RequestIdQuery = None,
) -> Any:
    """Publishes a custom event: one delivery per matching endpoint of the caller's tenant,
    written with the event in one transaction and sent by the `webhooks` workers. The same
    `request_id` with the same type and data returns the first event (its id is derived from
    the request id) and makes no second set of deliveries.
    """
    # A hot route (docs/architecture.md, "Hot routes"): no dependencies.
    caller = authorize(request, "webhooks:write")
    event = await container(request).webhooks.publish_event(
        caller.tenant,
        event_type=body.type,
        data=body.data,
        correlation_id=correlation_id(request),
        request_id=body.request_id or request_id_param,
    )
    return {
        "name": f"events/{event.id}",
        "id": str(event.id),
        "type": event.type,
        "time": event.time,
        "deliveries": event.deliveries,
    }
