"""Schedules: start a workflow on a cron expression or an interval (the database-backed beat
fires them; changes take effect without restarting it).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import pagination
from api.auth import Principal, require_scope
from api.deps import OperationsDep, SchedulesDep
from api.errors import ERROR_RESPONSES
from api.v1.schemas import RequestIdQuery, request_id_field
from domains.platform.schedules.model import Schedule, ScheduleRun
from domains.shared.errors import DomainError

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], responses=ERROR_RESPONSES)

Reader = Annotated[Principal, Depends(require_scope("schedules:read"))]
Writer = Annotated[Principal, Depends(require_scope("schedules:write"))]

_SCHEDULE_EXAMPLE: dict[str, Any] = {
    "name": "schedules/019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d",
    "id": "019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d",
    "display_name": "Hourly ping",
    "workflow": "platform.ping",
    "task": None,
    "args": {"message": "still alive"},
    "cron": "0 * * * *",
    "interval_seconds": None,
    "time_zone": "Europe/Paris",
    "enabled": True,
    "catch_up": False,
    "system": False,
    "next_run_time": "2026-11-25T13:00:00Z",
    "last_run_time": "2026-11-25T12:00:00Z",
    "last_operation": "operations/platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c",
    "create_time": "2026-11-25T11:58:00Z",
    "update_time": "2026-11-25T11:58:00Z",
}
_RUN_EXAMPLE: dict[str, Any] = {
    "schedule": "schedules/019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2d",
    "fire_time": "2026-11-25T12:00:00Z",
    "state": "STARTED",
    "operation": "operations/platform.019a8f0e-7d1c-7b3e-9c55-3f1f9e0a1b2c",
    "manual": False,
    "fired_by": "beat-4242@host#9f3a",
    "attempts": 0,
    "error": None,
}


class CreateScheduleRequest(BaseModel):
    """Body of ``POST /v1/schedules``: exactly one of ``cron`` and ``interval_seconds``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "display_name": "Hourly ping",
                "workflow": "platform.ping",
                "args": {"message": "still alive"},
                "cron": "0 * * * *",
                "time_zone": "Europe/Paris",
            }
        },
    )

    workflow: str = Field(
        min_length=1,
        max_length=100,
        description="Workflow to start, e.g. `platform.ping`, `reports.generate`,"
        " `imports.fromSource`.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="The workflow's arguments (checked against its input model now).",
    )
    cron: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Five-field cron expression (`minute hour day month weekday`) or `@daily`...",
    )
    interval_seconds: float | None = Field(
        default=None, gt=0, description="Fire every N seconds (instead of `cron`)."
    )
    time_zone: str = Field(
        default="UTC", min_length=1, max_length=64, description="IANA zone of the cron expression."
    )
    enabled: bool = Field(default=True, description="Whether it fires.")
    catch_up: bool = Field(
        default=False,
        description="After downtime fire every missed slot (bounded) instead of only the latest.",
    )
    display_name: str = Field(default="", max_length=200, description="Free text.")
    request_id: str | None = request_id_field()


class UpdateScheduleRequest(BaseModel):
    """Body of ``PATCH /v1/schedules/{id}``: only the fields given change."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"example": {"interval_seconds": 600, "enabled": True}}
    )

    workflow: str | None = Field(default=None, min_length=1, max_length=100)
    args: dict[str, Any] | None = None
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    interval_seconds: float | None = Field(default=None, gt=0)
    time_zone: str | None = Field(default=None, min_length=1, max_length=64)
    enabled: bool | None = None
    catch_up: bool | None = None
    display_name: str | None = Field(default=None, max_length=200)


class ScheduleOut(BaseModel):
    """A schedule resource."""

    model_config = ConfigDict(json_schema_extra={"example": _SCHEDULE_EXAMPLE})

    name: str
    id: str
    display_name: str
    workflow: str | None = Field(description="Workflow started (user schedules).")
    task: str | None = Field(description="Task sent (system schedules).")
    args: dict[str, Any]
    cron: str | None
    interval_seconds: float | None
    time_zone: str
    enabled: bool
    catch_up: bool
    system: bool = Field(description="Built-in: only interval_seconds can change; not deletable.")
    next_run_time: dt.datetime | None
    last_run_time: dt.datetime | None
    last_operation: str | None
    create_time: dt.datetime
    update_time: dt.datetime


class ListSchedulesResponse(BaseModel):
    """A page of schedules (AIP-158)."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"schedules": [_SCHEDULE_EXAMPLE], "next_page_token": ""}}
    )

    schedules: list[ScheduleOut]
    next_page_token: str = ""


class ScheduleRunOut(BaseModel):
    """One fired slot of a schedule."""

    model_config = ConfigDict(json_schema_extra={"example": _RUN_EXAMPLE})

    schedule: str
    fire_time: dt.datetime
    state: str = Field(description="PENDING, STARTED or FAILED.")
    operation: str | None
    manual: bool
    fired_by: str
    attempts: int
    error: str | None
    operation_state: str | None = Field(
        default=None,
        description="How the run's operation stands: RUNNING, SUCCEEDED, FAILED... (None for a"
        " system task, which has no operation).",
    )
    operation_error: str | None = Field(
        default=None, description="The operation's error message when it FAILED or was CANCELLED."
    )


class ListScheduleRunsResponse(BaseModel):
    """A schedule's latest runs, newest first."""

    model_config = ConfigDict(json_schema_extra={"example": {"runs": [_RUN_EXAMPLE]}})

    runs: list[ScheduleRunOut]


def schedule_out(schedule: Schedule) -> dict[str, Any]:
    """Renders a schedule.

    Args:
        schedule: The schedule.

    Returns:
        The JSON body.
    """
    return {
        "name": schedule.name,
        "id": schedule.id,
        "display_name": schedule.display_name,
        "workflow": schedule.workflow,
        "task": schedule.task,
        "args": schedule.args,
        "cron": schedule.cron,
        "interval_seconds": schedule.interval_seconds,
        "time_zone": schedule.time_zone,
        "enabled": schedule.enabled,
        "catch_up": schedule.catch_up,
        "system": schedule.system,
        "next_run_time": schedule.next_run_time,
        "last_run_time": schedule.last_run_time,
        "last_operation": schedule.last_operation,
        "create_time": schedule.create_time,
        "update_time": schedule.update_time,
    }


def run_out(run: ScheduleRun) -> dict[str, Any]:
    """Renders a run.

    Args:
        run: The run.

    Returns:
        The JSON body.
    """
    return {
        "schedule": f"schedules/{run.schedule_id}",
        "fire_time": run.fire_time,
        "state": run.state,
        "operation": run.operation,
        "manual": run.manual,
        "fired_by": run.fired_by,
        "attempts": run.attempts,
        "error": run.error,
    }


@router.post("", response_model=ScheduleOut, summary="Create a schedule")
async def create_schedule(
    body: CreateScheduleRequest,
    svc: SchedulesDep,
    caller: Writer,
    request_id_param: RequestIdQuery = None,
) -> Any:
    """Creates a schedule. The workflow must exist and `args` must fit its input model; `cron`
    (evaluated in `time_zone`) or `interval_seconds` says when it fires. The same `request_id`
    with the same body returns the schedule the first call created.
    """
    schedule = await svc.create_schedule(
        caller.tenant,
        workflow=body.workflow,
        args=body.args,
        cron=body.cron,
        interval_seconds=body.interval_seconds,
        time_zone=body.time_zone,
        enabled=body.enabled,
        catch_up=body.catch_up,
        display_name=body.display_name,
        request_id=body.request_id or request_id_param,
    )
    return schedule_out(schedule)


@router.get("", response_model=ListSchedulesResponse, summary="List schedules")
async def list_schedules(
    svc: SchedulesDep,
    caller: Reader,
    page_size: Annotated[int | None, Query(description="At most 1000; default 50.")] = None,
    page_token: Annotated[
        str | None, Query(description="next_page_token of the previous page.")
    ] = None,
) -> Any:
    """Lists your schedules and the system schedules (`system: true`), by id."""
    size = pagination.clamp_page_size(page_size)
    fingerprint = pagination.query_fingerprint("schedules", caller.tenant)
    after = pagination.decode_after(page_token, query_fingerprint=fingerprint)
    page = await svc.list_schedules(caller.tenant, page_size=size, after_id=after)
    token = pagination.next_page_token(page.last_id, query_fingerprint=fingerprint)
    return {"schedules": [schedule_out(s) for s in page.schedules], "next_page_token": token}


@router.get("/{schedule_id}", response_model=ScheduleOut, summary="Get a schedule")
async def get_schedule(schedule_id: str, svc: SchedulesDep, caller: Reader) -> Any:
    """Returns a schedule with its next and last run times and last operation."""
    return schedule_out(await svc.get_schedule(caller.tenant, schedule_id))


@router.patch("/{schedule_id}", response_model=ScheduleOut, summary="Update a schedule")
async def update_schedule(
    schedule_id: str, body: UpdateScheduleRequest, svc: SchedulesDep, caller: Writer
) -> Any:
    """Changes the fields given; the running beat applies it within seconds. A system schedule
    accepts only `interval_seconds`, and only from an operator key (`platform:admin`).
    """
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    return schedule_out(
        await svc.update_schedule(caller.tenant, schedule_id, changes, operator=caller.operator)
    )


@router.delete(
    "/{schedule_id}",
    status_code=200,
    summary="Delete a schedule",
    responses={200: {"description": "Deleted", "content": {"application/json": {"example": {}}}}},
)
async def delete_schedule(schedule_id: str, svc: SchedulesDep, caller: Writer) -> Any:
    """Deletes a schedule and its run history (FAILED_PRECONDITION for a system schedule)."""
    await svc.delete_schedule(caller.tenant, schedule_id, operator=caller.operator)
    return JSONResponse({})


@router.post("/{schedule_id}:run", response_model=ScheduleRunOut, summary="Run a schedule now")
async def run_schedule(schedule_id: str, svc: SchedulesDep, caller: Writer) -> Any:
    """Fires the schedule now, outside its timing; returns the run with its operation. A system
    schedule only for an operator key (`platform:admin`).
    """
    return run_out(await svc.run_schedule(caller.tenant, schedule_id, operator=caller.operator))


@router.get(
    "/{schedule_id}/runs", response_model=ListScheduleRunsResponse, summary="List recent runs"
)
async def list_runs(
    schedule_id: str,
    svc: SchedulesDep,
    operations: OperationsDep,
    caller: Reader,
    page_size: Annotated[int | None, Query(description="At most 1000; default 50.")] = None,
) -> Any:
    """Returns the schedule's latest fired slots, newest first, with their operations and how
    each operation stands (`operation_state`: a STARTED run's operation may since have
    SUCCEEDED or FAILED).
    """
    runs = await svc.list_runs(
        caller.tenant, schedule_id, limit=pagination.clamp_page_size(page_size)
    )
    outs = [run_out(r) for r in runs]
    for out in outs:
        name = out["operation"]
        if not name:
            continue
        try:
            op = await operations.get(name.removeprefix("operations/"), tenant=caller.tenant)
        except DomainError:  # deleted since (AIP-151 DELETE) or purged by retention
            out["operation_state"] = "DELETED"
            continue
        out["operation_state"] = str(op.state)
        out["operation_error"] = op.error.message if op.error else None
    return {"runs": outs}
