"""Operations (AIP-151): get, list, cancel, wait, delete, retry."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import filtering, pagination
from api.auth import Principal, require_scope
from api.deps import OperationsDep, TaskControlDep
from api.errors import ERROR_RESPONSES
from api.v1.schemas import OperationOut, operation_out, operation_response
from domains.operations.model import TERMINAL_STATES, State
from domains.shared.errors import InvalidArgument
from domains.shared.query import Condition

router = APIRouter(prefix="/v1/operations", tags=["operations"], responses=ERROR_RESPONSES)

Reader = Annotated[Principal, Depends(require_scope("operations:read"))]
Writer = Annotated[Principal, Depends(require_scope("operations:write"))]

FILTER_FIELDS: dict[str, filtering.FieldSpec] = {
    "done": filtering.FieldSpec("bool"),
    "metadata.state": filtering.FieldSpec("enum", tuple(s.value for s in State)),
    "metadata.domain": filtering.FieldSpec("string"),
    "metadata.type": filtering.FieldSpec("string"),
    "metadata.target": filtering.FieldSpec("string"),
    "create_time": filtering.FieldSpec("timestamp"),
    "update_time": filtering.FieldSpec("timestamp"),
}

# What the indexes (tenant, <field>, create_time, id) of every domain schema serve: one
# equality field, create_time ranges, and the domain (it picks the schemas). update_time and
# != on the equality fields would walk the index, so they are refused (AIP-160 allows it).
INDEXED_EQUALITY = frozenset({"done", "metadata.state", "metadata.type", "metadata.target"})
# (tenant, type, done, create_time, id) serves both; done with a state is folded into the state.
INDEXED_TOGETHER = frozenset({frozenset({"done", "metadata.type"})})


def _fold_done(conditions: list[Condition]) -> list[Condition] | None:
    """Drops ``done = b`` next to ``metadata.state = S`` (the state decides done).

    Args:
        conditions: Parsed filter.

    Returns:
        The conditions without the redundant ``done``, or None if they contradict each other
        (e.g. ``done = false AND metadata.state = SUCCEEDED``: nothing matches).
    """
    states = [c for c in conditions if c.field == "metadata.state" and c.op == "="]
    dones = [c for c in conditions if c.field == "done" and c.op in ("=", "!=")]
    if not states or not dones:
        return conditions
    for done in dones:
        wanted = bool(done.value) if done.op == "=" else not done.value
        if any((State(str(s.value)) in TERMINAL_STATES) != wanted for s in states):
            return None
    return [c for c in conditions if c not in dones]


class ListOperationsResponse(BaseModel):
    """A page of operations (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "operations": [OperationOut.model_config["json_schema_extra"]["example"]],  # type: ignore[index]
                "next_page_token": "eyJmIjoiYjE0YTRlIiwicCI6eyJhZnRlciI6IjAxOWE4ZjBlIn19x4Q",
            }
        }
    )

    operations: list[OperationOut]
    next_page_token: str = Field(
        default="", description="Pass as page_token for the next page; empty at the end."
    )


class WaitRequest(BaseModel):
    """Body of ``:wait``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {"timeout": "30s"}})

    timeout: float | Annotated[str, Field(max_length=32)] | None = Field(
        default=None,
        description='Seconds to wait, at most 60: a number or a Duration like "30s". Default 30.',
    )


def _newest_first(order_by: str | None) -> bool:
    words = (order_by or "").split()
    if not words or words in (["create_time"], ["create_time", "asc"]):
        return False
    if words == ["create_time", "desc"]:
        return True
    raise InvalidArgument(
        f"order_by {order_by!r} is not supported; use create_time or create_time desc",
        reason="INVALID_ORDER_BY",
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s?\s*$")


def _timeout_seconds(value: float | str | None) -> float:
    if value is None:
        return 30.0
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise InvalidArgument(
                f'timeout {value!r} is not a duration; use seconds like 30 or "30s"',
                reason="INVALID_TIMEOUT",
            )
        return float(match.group(1))
    return float(value)


@router.get("/{operation_id}", response_model=OperationOut, summary="Get an operation")
async def get_operation(
    operation_id: Annotated[str, Path(max_length=200)],
    operations: OperationsDep,
    caller: Reader,
) -> Any:
    """Returns the latest state of an operation (`{domain}.{id}`, as in its name)."""
    return operation_response(await operations.get(operation_id, tenant=caller.tenant))


@router.get("", response_model=ListOperationsResponse, summary="List operations")
async def list_operations(
    operations: OperationsDep,
    caller: Reader,
    filter_: Annotated[
        str | None,
        Query(
            alias="filter",
            description='AIP-160 filter, e.g. `done = false AND metadata.domain = "imports"`;'
            " fields: done, metadata.state, metadata.type, metadata.target (=, one of them, or"
            " done with metadata.type or metadata.state), metadata.domain (=, !=),"
            " create_time (<, <=, =, >=, >)",
        ),
    ] = None,
    page_size: Annotated[
        int | None,
        Query(description="At most 1000 (larger is served as 1000); default 50."),
    ] = None,
    page_token: Annotated[
        str | None,
        Query(
            max_length=pagination.MAX_PAGE_TOKEN_LENGTH,
            description="next_page_token of the previous page.",
        ),
    ] = None,
    order_by: Annotated[
        str | None,
        Query(
            max_length=64,
            description="AIP-132: `create_time` (default, oldest first) or `create_time desc`.",
        ),
    ] = None,
) -> Any:
    """Lists operations of every domain in creation order (or newest first), filtered and paged."""
    folded = _fold_done(filtering.parse_filter(filter_, FILTER_FIELDS))
    conditions = filtering.require_indexed(
        folded or [],
        filter_,
        equality=INDEXED_EQUALITY,
        handled=frozenset({"metadata.domain"}),
        combined=INDEXED_TOGETHER,
    )
    if folded is None:  # contradictory: nothing can match
        return {"operations": [], "next_page_token": ""}
    newest_first = _newest_first(order_by)
    size = pagination.clamp_page_size(page_size)
    # The tenant is part of the fingerprint: a token never crosses tenants.
    fingerprint = pagination.query_fingerprint(
        "operations", caller.tenant, filter_, "desc" if newest_first else None
    )
    after = pagination.decode_after_keyset(page_token, query_fingerprint=fingerprint)
    page = await operations.list(
        conditions, page_size=size, after=after, tenant=caller.tenant, newest_first=newest_first
    )
    token = pagination.next_keyset_token(page.last, query_fingerprint=fingerprint)
    return {"operations": [operation_out(op) for op in page.operations], "next_page_token": token}


@router.post("/{operation_id}:cancel", response_model=OperationOut, summary="Cancel an operation")
async def cancel_operation(
    operation_id: Annotated[str, Path(max_length=200)],
    operations: OperationsDep,
    control: TaskControlDep,
    caller: Writer,
) -> Any:
    """Starts cancellation: a pending operation ends CANCELLED at once; a running one becomes
    CANCELLING and stops at its next unit of work. The queued task is also revoked.
    """
    op = await operations.cancel(operation_id, tenant=caller.tenant)
    try:
        await asyncio.to_thread(control.revoke, str(op.id))
    except Exception:  # noqa: S110 - revoke is best effort; the state check stops the task anyway
        pass
    return operation_response(op)


@router.post("/{operation_id}:wait", response_model=OperationOut, summary="Wait for an operation")
async def wait_operation(
    operation_id: Annotated[str, Path(max_length=200)],
    operations: OperationsDep,
    caller: Reader,
    body: Annotated[WaitRequest | None, Body()] = None,
) -> Any:
    """Long-polls until the operation is done or the timeout (≤ 60 s) passes; returns it either way."""
    timeout = _timeout_seconds(body.timeout if body else None)
    return operation_response(await operations.wait(operation_id, timeout, tenant=caller.tenant))


@router.post(
    "/{operation_id}:retry", response_model=OperationOut, summary="Retry a failed operation"
)
async def retry_operation(
    operation_id: Annotated[str, Path(max_length=200)],
    operations: OperationsDep,
    caller: Writer,
) -> Any:
    """Starts a new attempt of a FAILED operation; its task is dispatched again."""
    return operation_response(await operations.retry(operation_id, tenant=caller.tenant))


@router.delete(
    "/{operation_id}",
    status_code=200,
    summary="Delete a done operation",
    responses={200: {"description": "Deleted", "content": {"application/json": {"example": {}}}}},
)
async def delete_operation(
    operation_id: Annotated[str, Path(max_length=200)],
    operations: OperationsDep,
    caller: Writer,
) -> Response:
    """Deletes an operation that is done (FAILED_PRECONDITION otherwise)."""
    await operations.delete(operation_id, tenant=caller.tenant)
    return JSONResponse({})
