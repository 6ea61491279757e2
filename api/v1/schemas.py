"""HTTP models shared by routers: the Operation resource (AIP-151), AIP-155 request ids."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from domains.operations.model import Operation

METADATA_TYPE = "type.googleapis.com/conveyor.v1.OperationMetadata"

REQUEST_ID_DESCRIPTION = (
    "AIP-155: a retried create with the same request_id and body returns the resource the"
    " first call created (no duplicate); the same request_id with another body is 409"
    " ALREADY_EXISTS (REQUEST_ID_REUSED). A UUID is recommended."
)

RequestIdQuery = Annotated[
    str | None,
    Query(
        alias="request_id",
        min_length=1,
        max_length=128,
        description=REQUEST_ID_DESCRIPTION + " The body field wins over this parameter.",
    ),
]
"""``?request_id=`` of a create (the body's ``request_id`` field, when sent, wins)."""


def request_id_field() -> Any:
    """Returns the ``request_id`` body field of a create request model."""
    return Field(default=None, min_length=1, max_length=128, description=REQUEST_ID_DESCRIPTION)


class ProgressOut(BaseModel):
    """Progress of an operation."""

    done: int = Field(description="Units done.")
    total: int | None = Field(default=None, description="Units in all, when known.")
    message: str = Field(default="", description="Short status.")


class OperationMetadataOut(BaseModel):
    """Operation metadata."""

    model_config = ConfigDict(populate_by_name=True)

    type_url: str = Field(default=METADATA_TYPE, alias="@type")
    domain: str = Field(description="Owning domain (schema and queue).")
    type: str = Field(description="Workflow type within the domain.")
    target: str = Field(description="Resource the operation works on.")
    state: str = Field(description="PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING or CANCELLED.")
    progress: ProgressOut
    attempt: int = Field(description="Worker attempts so far.")
    create_time: dt.datetime
    update_time: dt.datetime
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    heartbeat_time: dt.datetime | None = None
    dispatch_count: int = Field(
        default=0, description="Times its task was handed to the broker (re-dispatches included)."
    )
    correlation_id: str | None = Field(
        default=None, description="X-Request-Id of the call that created it (find it in logs)."
    )


class StatusOut(BaseModel):
    """google.rpc.Status of a failed operation."""

    code: int = Field(description="google.rpc.Code number.")
    status: str = Field(description="google.rpc.Code name.")
    message: str
    details: list[dict[str, Any]] = []


class OperationOut(BaseModel):
    """A long-running operation (AIP-151)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "name": "operations/platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c",
                "metadata": {
                    "@type": METADATA_TYPE,
                    "domain": "platform",
                    "type": "ping",
                    "target": "pings/019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d",
                    "state": "SUCCEEDED",
                    "progress": {"done": 1, "total": 1, "message": "answering"},
                    "attempt": 1,
                    "create_time": "2026-11-25T12:00:00Z",
                    "update_time": "2026-11-25T12:00:01Z",
                },
                "done": True,
                "response": {"reply": "pong: hello"},
            }
        }
    )

    name: str = Field(description="operations/{domain}.{id}")
    metadata: OperationMetadataOut
    done: bool
    error: StatusOut | None = None
    response: dict[str, Any] | None = None


def operation_out(op: Operation) -> dict[str, Any]:
    """Renders an Operation as its JSON resource.

    Args:
        op: The aggregate.

    Returns:
        The JSON body (``error``/``response`` only when set).
    """
    body: dict[str, Any] = {
        "name": op.name,
        "metadata": {
            "@type": METADATA_TYPE,
            "domain": op.domain,
            "type": op.type,
            "target": op.target,
            "state": str(op.state),
            "progress": op.progress.to_dict(),
            "attempt": op.attempt,
            "create_time": op.create_time.isoformat(),
            "update_time": op.update_time.isoformat(),
            "start_time": op.start_time.isoformat() if op.start_time else None,
            "end_time": op.end_time.isoformat() if op.end_time else None,
            "heartbeat_time": op.heartbeat_time.isoformat() if op.heartbeat_time else None,
            "dispatch_count": op.dispatch_count,
            "correlation_id": op.correlation_id,
        },
        "done": op.done,
    }
    if op.error is not None:
        body["error"] = op.error.to_dict()
    if op.response is not None and op.done:
        body["response"] = op.response
    return body


def operation_response(op: Operation) -> JSONResponse:
    """Renders an Operation as a JSON response without a second validation pass (the body is
    built from the aggregate, and ``OperationOut`` documents it in OpenAPI).

    Args:
        op: The aggregate.

    Returns:
        The response.
    """
    return JSONResponse(operation_out(op))
