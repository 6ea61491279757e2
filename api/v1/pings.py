"""Pings: a diagnostic workflow through the whole pipeline (API, outbox, broker, worker)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, authorize, require_scope
from api.deps import OperationsDep, PingsDep, container, correlation_id
from api.errors import ERROR_RESPONSES
from api.v1.schemas import OperationOut, operation_response
from domains.shared.errors import NotFound
from domains.shared.ids import parse_id

router = APIRouter(prefix="/v1/pings", tags=["pings"], responses=ERROR_RESPONSES)


class CreatePingRequest(BaseModel):
    """Body of ``POST /v1/pings``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"message": "hello", "sleep_seconds": 2, "steps": 4}},
    )

    message: str = Field(
        default="", max_length=1000, description="Echoed back as `pong: <message>`."
    )
    sleep_seconds: float = Field(
        default=0, ge=0, le=600, description="How long the worker works on it."
    )
    steps: int = Field(
        default=1, ge=1, le=1000, description="Units of work (progress, cancellation points)."
    )
    fail_attempts: int = Field(
        default=0, ge=0, le=20, description="The first N attempts fail transiently."
    )
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="AIP-155: a retried create returns the same operation.",
    )


class PingOut(BaseModel):
    """A ping resource."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "pings/019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d",
                "message": "hello",
                "reply": "pong: hello",
                "worker": "platform@host",
                "create_time": "2026-11-25T12:00:00Z",
                "complete_time": "2026-11-25T12:00:01Z",
                "operation": "operations/platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c",
                "state": "SUCCEEDED",
                "done": True,
            }
        }
    )

    name: str
    message: str
    reply: str | None = None
    worker: str | None = None
    create_time: dt.datetime
    complete_time: dt.datetime | None = None
    operation: str
    state: str
    done: bool


@router.post("", response_model=OperationOut, summary="Send a ping")
async def create_ping(
    body: CreatePingRequest,
    request: Request,
    request_id_param: Annotated[str | None, Query(alias="request_id", max_length=128)] = None,
) -> Any:
    """Creates a ping and returns its operation; a worker on queue `platform` answers it."""
    # A hot route: the caller, the service and the correlation id are read from the request,
    # not declared as dependencies (docs/architecture.md, "Hot routes").
    caller = authorize(request, "operations:write")
    op = await container(request).pings.create_ping(
        message=body.message,
        sleep_seconds=body.sleep_seconds,
        steps=body.steps,
        fail_attempts=body.fail_attempts,
        request_id=body.request_id or request_id_param,
        correlation_id=correlation_id(request),
        tenant=caller.tenant,
    )
    return operation_response(op)


@router.get("/{ping_id}", response_model=PingOut, summary="Get a ping")
async def get_ping(
    ping_id: Annotated[str, Path(max_length=100)],
    pings: PingsDep,
    operations: OperationsDep,
    caller: Annotated[Principal, Depends(require_scope("operations:read"))],
) -> Any:
    """Returns a ping with its reply and its operation's state."""
    ping = await pings.get_ping(parse_id(ping_id, what="ping id"), tenant=caller.tenant)
    try:
        op = await operations.get(f"platform.{ping.operation_id}", tenant=caller.tenant)
        state, done = str(op.state), op.done
    except NotFound:
        # The operation was deleted or purged: the ping itself still tells how it ended.
        state, done = ("SUCCEEDED", True) if ping.completions else ("UNKNOWN", True)
    return {
        "name": ping.name,
        "message": ping.message,
        "reply": ping.reply,
        "worker": ping.worker,
        "create_time": ping.create_time,
        "complete_time": ping.complete_time,
        "operation": f"operations/platform.{ping.operation_id}",
        "state": state,
        "done": done,
    }
