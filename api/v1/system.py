"""System status for operators: queues, workers, outbox backlog, beat leader (needs ``*``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, require_scope
from api.errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/system", tags=["system"], responses=ERROR_RESPONSES)

Operator = Annotated[Principal, Depends(require_scope("*"))]


class QueueOut(BaseModel):
    """One domain queue."""

    name: str
    waiting: int | None = Field(description="Messages waiting on the broker (None: unknown).")
    workers: int = Field(description="Workers alive consuming it.")


class WorkerOut(BaseModel):
    """A worker that answered a ping."""

    name: str
    queues: list[str]


class OutboxOut(BaseModel):
    """A domain's outbox: rows committed but not yet published."""

    domain: str
    unsent: int | None
    oldest_time: str | None = None
    age_seconds: float | None = None


class BeatNodeOut(BaseModel):
    """A beat process seen recently."""

    node: str
    leader: bool
    last_seen_time: str | None


class BeatOut(BaseModel):
    """The beat leader (the one beat whose schedules fire)."""

    leader: str | None
    lease_expire_time: str | None = None
    leader_since_time: str | None = None
    nodes: list[BeatNodeOut] = []


class SystemStatusOut(BaseModel):
    """The platform at a glance (what ``conveyor status`` prints)."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "queues": [
                    {"name": "platform", "waiting": 0, "workers": 1},
                    {"name": "imports", "waiting": 12, "workers": 2},
                ],
                "unacked": 3,
                "workers": [{"name": "imports-1@host", "queues": ["imports"]}],
                "outbox": [
                    {
                        "domain": "imports",
                        "unsent": 2,
                        "oldest_time": "2026-11-25T12:00:00+00:00",
                        "age_seconds": 0.4,
                    }
                ],
                "beat": {
                    "leader": "beat-1@host",
                    "lease_expire_time": "2026-11-25T12:00:20+00:00",
                    "leader_since_time": "2026-11-25T09:00:00+00:00",
                    "nodes": [
                        {
                            "node": "beat-1@host",
                            "leader": True,
                            "last_seen_time": "2026-11-25T12:00:05+00:00",
                        }
                    ],
                },
                "problems": [],
            }
        }
    )

    queues: list[QueueOut]
    unacked: int | None = Field(default=None, description="Delivered, not yet acknowledged.")
    workers: list[WorkerOut]
    outbox: list[OutboxOut]
    beat: BeatOut
    problems: list[str] = Field(description="Sources that could not be read.")


@router.get("/status", response_model=SystemStatusOut, summary="System status")
async def system_status(request: Request, caller: Operator) -> Any:
    """Queue depths, workers alive per queue, outbox backlog and age, beat leader. Needs an
    all-scopes (``*``) key: it describes the whole platform, not one tenant.
    """
    collector = request.app.state.system_status
    return await collector.collect()
