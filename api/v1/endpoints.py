"""Webhook endpoints: create, get, list, update, delete, rotate the secret, replay; and their
deliveries and attempts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import filtering, pagination
from api.auth import Principal, require_scope
from api.deps import WebhooksDep, request_id
from api.errors import ERROR_RESPONSES
from api.v1.deliveries import (
    AttemptOut,
    DeliveryOut,
    attempt_out,
    delivery_out,
)
from api.v1.schemas import OperationOut, RequestIdQuery, operation_response, request_id_field
from domains.shared.ids import parse_id
from domains.webhooks.model import DeliveryState, Endpoint
from domains.webhooks.service import UNSET

router = APIRouter(prefix="/v1/endpoints", tags=["webhooks"], responses=ERROR_RESPONSES)

_ID = "019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d"
DELIVERY_FILTER_FIELDS: dict[str, filtering.FieldSpec] = {
    "state": filtering.FieldSpec("enum", tuple(s.value for s in DeliveryState)),
    "event_type": filtering.FieldSpec("string"),
    "create_time": filtering.FieldSpec("timestamp"),
    "attempts": filtering.FieldSpec("int"),
}
# Served by the indexes (endpoint_id, [state|event_type,] create_time, id); attempts would walk
# every delivery of the endpoint, so it is refused (AIP-160 allows it).
DELIVERY_INDEXED_EQUALITY = frozenset({"state", "event_type"})

Reader = Annotated[Principal, Depends(require_scope("webhooks:read"))]
Writer = Annotated[Principal, Depends(require_scope("webhooks:write"))]
Correlation = Annotated[str | None, Depends(request_id)]

_ENDPOINT_EXAMPLE: dict[str, Any] = {
    "name": f"endpoints/{_ID}",
    "id": _ID,
    "url": "https://hooks.example.com/conveyor",
    "description": "billing service",
    "event_types": ["imports.*"],
    "enabled": True,
    "disabled_reason": None,
    "rate_limit": 50.0,
    "breaker": {
        "state": "CLOSED",
        "consecutive_failures": 0,
        "failing_since": None,
        "until": None,
    },
    "previous_secret_expire_time": None,
    "create_time": "2026-11-25T12:00:00Z",
    "update_time": "2026-11-25T12:00:00Z",
}
_SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2s0Q7ZmXhO4="  # noqa: S105 - an example


class CreateEndpointRequest(BaseModel):
    """Body of ``POST /v1/endpoints``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "url": "https://hooks.example.com/conveyor",
                "description": "billing service",
                "event_types": ["imports.*"],
                "rate_limit": 50,
            }
        },
    )

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="http(s) URL; internal addresses are refused (SSRF guard).",
    )
    description: str = Field(default="", max_length=1000)
    event_types: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1,
        max_length=50,
        description="Event types or patterns with wildcards, e.g. imports.*",
    )
    enabled: bool = True
    rate_limit: float | None = Field(
        default=None, gt=0, le=10000, description="Requests per second at most; null: no limit."
    )
    request_id: str | None = request_id_field()


class UpdateEndpointRequest(BaseModel):
    """Body of ``PATCH /v1/endpoints/{id}``: only the fields given change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"enabled": True, "event_types": ["imports.*", "orders.*"]}},
    )

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str | None = Field(default=None, max_length=1000)
    event_types: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, min_length=1, max_length=50
    )
    enabled: bool | None = Field(
        default=None, description="true re-enables a disabled endpoint and resumes its deliveries."
    )
    rate_limit: float | None = Field(
        default=None, gt=0, le=10000, description="null removes the limit."
    )


class BreakerOut(BaseModel):
    """Circuit breaker of an endpoint."""

    state: str = Field(description="CLOSED, OPEN (deliveries PAUSED) or HALF_OPEN (probing).")
    consecutive_failures: int
    failing_since: dt.datetime | None = None
    until: dt.datetime | None = Field(default=None, description="End of the cool-down.")


class EndpointOut(BaseModel):
    """A webhook endpoint (its secret is never shown after creation or rotation)."""

    model_config = ConfigDict(json_schema_extra={"example": _ENDPOINT_EXAMPLE})

    name: str
    id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = None
    rate_limit: float | None = None
    breaker: BreakerOut
    previous_secret_expire_time: dt.datetime | None = Field(
        default=None, description="Until then the previous secret signs too."
    )
    create_time: dt.datetime
    update_time: dt.datetime


class EndpointWithSecretOut(EndpointOut):
    """An endpoint with its signing secret, shown once (create, rotateSecret)."""

    model_config = ConfigDict(
        json_schema_extra={"example": {**_ENDPOINT_EXAMPLE, "secret": _SECRET_EXAMPLE}}
    )

    secret: str = Field(description="whsec_... signing secret; store it now.")


class ListEndpointsResponse(BaseModel):
    """A page of endpoints (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"endpoints": [_ENDPOINT_EXAMPLE], "next_page_token": ""}}
    )

    endpoints: list[EndpointOut]
    next_page_token: str = ""


class ListDeliveriesResponse(BaseModel):
    """A page of deliveries (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "deliveries": [DeliveryOut.model_config["json_schema_extra"]["example"]],  # type: ignore[index]
                "next_page_token": "",
            }
        }
    )

    deliveries: list[DeliveryOut]
    next_page_token: str = ""


class ListAttemptsResponse(BaseModel):
    """The attempts of a delivery, in order."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {"attempts": [AttemptOut.model_config["json_schema_extra"]["example"]]}  # type: ignore[index]
        }
    )

    attempts: list[AttemptOut]


class ReplayRequest(BaseModel):
    """Body of ``:replay``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"since": "2026-11-24T00:00:00Z", "request_id": "r-1"}},
    )

    since: dt.datetime = Field(description="Replay FAILED/DEAD deliveries created since then.")
    request_id: str | None = Field(default=None, min_length=1, max_length=128)


def endpoint_out(endpoint: Endpoint, secret: str | None = None) -> dict[str, Any]:
    """Renders an endpoint.

    Args:
        endpoint: The endpoint.
        secret: Its secret in clear, only right after create or rotation.

    Returns:
        The JSON resource.
    """
    body: dict[str, Any] = {
        "name": endpoint.name,
        "id": str(endpoint.id),
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "rate_limit": endpoint.rate_limit,
        "breaker": {
            "state": str(endpoint.breaker_state),
            "consecutive_failures": endpoint.consecutive_failures,
            "failing_since": endpoint.failing_since,
            "until": endpoint.breaker_until,
        },
        "previous_secret_expire_time": endpoint.previous_secret_expire_time,
        "create_time": endpoint.create_time,
        "update_time": endpoint.update_time,
    }
    if secret is not None:
        body["secret"] = secret
    return body


def _endpoint_id(text: str) -> uuid.UUID:
    return parse_id(text, what="endpoint id")


@router.post("", response_model=EndpointWithSecretOut, summary="Create an endpoint")
async def create_endpoint(
    body: CreateEndpointRequest,
    svc: WebhooksDep,
    caller: Writer,
    request_id_param: RequestIdQuery = None,
) -> Any:
    """Creates an endpoint and returns it with its signing secret (shown on create only). The
    same `request_id` with the same body returns the endpoint the first call created, with its
    secret (the first answer may have been lost).
    """
    endpoint, secret = await svc.create_endpoint(
        caller.tenant,
        url=body.url,
        event_types=list(body.event_types),
        description=body.description,
        enabled=body.enabled,
        rate_limit=body.rate_limit,
        request_id=body.request_id or request_id_param,
    )
    return endpoint_out(endpoint, secret)


@router.get("", response_model=ListEndpointsResponse, summary="List endpoints")
async def list_endpoints(
    svc: WebhooksDep,
    caller: Reader,
    page_size: Annotated[int | None, Query(description="At most 1000; default 50.")] = None,
    page_token: Annotated[str | None, Query(max_length=2000)] = None,
) -> Any:
    """Lists the caller's endpoints in creation order."""
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.query_fingerprint("endpoints", caller.tenant)
    after = pagination.decode_after_id(page_token, query_fingerprint=fingerprint)
    page = await svc.list_endpoints(caller.tenant, page_size=size, after_id=after)
    token = pagination.next_page_token(page.last_id, query_fingerprint=fingerprint)
    return {"endpoints": [endpoint_out(e) for e in page.items], "next_page_token": token}


@router.get("/{endpoint_id}", response_model=EndpointOut, summary="Get an endpoint")
async def get_endpoint(endpoint_id: str, svc: WebhooksDep, caller: Reader) -> Any:
    """Returns an endpoint with its breaker state (never its secret)."""
    return endpoint_out(await svc.get_endpoint(caller.tenant, _endpoint_id(endpoint_id)))


@router.patch("/{endpoint_id}", response_model=EndpointOut, summary="Update an endpoint")
async def update_endpoint(
    endpoint_id: str,
    body: UpdateEndpointRequest,
    svc: WebhooksDep,
    caller: Writer,
    correlation: Correlation,
) -> Any:
    """Changes the fields given; `enabled: true` re-enables a disabled endpoint, closes its
    breaker and resumes its paused deliveries.
    """
    given = body.model_fields_set
    endpoint = await svc.update_endpoint(
        caller.tenant,
        _endpoint_id(endpoint_id),
        url=body.url,
        description=body.description,
        event_types=list(body.event_types) if body.event_types is not None else None,
        enabled=body.enabled,
        rate_limit=body.rate_limit if "rate_limit" in given else UNSET,
        correlation_id=correlation,
    )
    return endpoint_out(endpoint)


@router.delete(
    "/{endpoint_id}",
    status_code=200,
    summary="Delete an endpoint",
    responses={200: {"description": "Deleted", "content": {"application/json": {"example": {}}}}},
)
async def delete_endpoint(endpoint_id: str, svc: WebhooksDep, caller: Writer) -> Any:
    """Deletes an endpoint with its deliveries and attempts."""
    await svc.delete_endpoint(caller.tenant, _endpoint_id(endpoint_id))
    return JSONResponse({})


@router.post(
    "/{endpoint_id}:rotateSecret",
    response_model=EndpointWithSecretOut,
    summary="Rotate the signing secret",
)
async def rotate_secret(endpoint_id: str, svc: WebhooksDep, caller: Writer) -> Any:
    """Gives the endpoint a new secret (returned once). Until `previous_secret_expire_time`
    every request carries signatures by both secrets, so receivers can switch without loss.
    """
    endpoint, secret = await svc.rotate_secret(caller.tenant, _endpoint_id(endpoint_id))
    return endpoint_out(endpoint, secret)


@router.post(
    "/{endpoint_id}:replay", response_model=OperationOut, summary="Replay failed deliveries"
)
async def replay_endpoint(
    endpoint_id: str,
    svc: WebhooksDep,
    caller: Writer,
    correlation: Correlation,
    body: Annotated[ReplayRequest, Body()],
) -> Any:
    """Sends again every FAILED or DEAD delivery of the endpoint created since `since`;
    returns an Operation (type `replay`) whose progress counts the deliveries re-queued.
    """
    op = await svc.replay(
        caller.tenant,
        _endpoint_id(endpoint_id),
        body.since,
        request_id=body.request_id,
        correlation_id=correlation,
    )
    return operation_response(op)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=ListDeliveriesResponse,
    summary="List an endpoint's deliveries",
)
async def list_deliveries(
    endpoint_id: str,
    svc: WebhooksDep,
    caller: Reader,
    filter_: Annotated[
        str | None,
        Query(
            alias="filter",
            max_length=2000,
            description='AIP-160 filter, e.g. `state = "DEAD"`; fields: state or event_type'
            " (=, one of them) and create_time (<, <=, =, >=, >)",
        ),
    ] = None,
    page_size: Annotated[int | None, Query(description="At most 1000; default 50.")] = None,
    page_token: Annotated[str | None, Query(max_length=2000)] = None,
) -> Any:
    """Lists the endpoint's deliveries in creation order, filtered and paged."""
    endpoint = _endpoint_id(endpoint_id)
    conditions = filtering.require_indexed(
        filtering.parse_filter(filter_, DELIVERY_FILTER_FIELDS),
        filter_,
        equality=DELIVERY_INDEXED_EQUALITY,
    )
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.query_fingerprint("deliveries", caller.tenant, endpoint_id, filter_)
    after = pagination.decode_after_keyset(page_token, query_fingerprint=fingerprint)
    page = await svc.list_deliveries(
        caller.tenant, endpoint, conditions, page_size=size, after=after
    )
    token = pagination.next_keyset_token(page.last, query_fingerprint=fingerprint)
    return {"deliveries": [delivery_out(d) for d in page.items], "next_page_token": token}


@router.get(
    "/{endpoint_id}/deliveries/{delivery_id}",
    response_model=DeliveryOut,
    summary="Get a delivery",
)
async def get_endpoint_delivery(
    endpoint_id: str, delivery_id: str, svc: WebhooksDep, caller: Reader
) -> Any:
    """Returns one delivery of the endpoint."""
    delivery = await svc.get_delivery(
        caller.tenant, parse_id(delivery_id, what="delivery id"), _endpoint_id(endpoint_id)
    )
    return delivery_out(delivery)


@router.get(
    "/{endpoint_id}/deliveries/{delivery_id}/attempts",
    response_model=ListAttemptsResponse,
    summary="List a delivery's attempts",
)
async def list_attempts(
    endpoint_id: str, delivery_id: str, svc: WebhooksDep, caller: Reader
) -> Any:
    """Lists every HTTP attempt of the delivery: time, status, duration, first 4 KB of the
    response body, error.
    """
    attempts = await svc.list_attempts(
        caller.tenant, _endpoint_id(endpoint_id), parse_id(delivery_id, what="delivery id")
    )
    return {"attempts": [attempt_out(a) for a in attempts]}
