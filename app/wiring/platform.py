"""Wiring of the platform domain: pings, API keys, schedules and the operations maintenance."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from app.wiring.module import DomainModule
from domains.platform.keys.service import ApiKeyService
from domains.platform.pings.service import PingService
from domains.platform.schedules.service import BuiltinSchedule, ScheduleService
from domains.platform.tables import tables
from domains.platform.unit_of_work import PlatformUnitOfWork

if TYPE_CHECKING:
    from app.config import Settings
    from app.container import Container
    from app.workflows import StartContext, Workflow
    from domains.operations.model import Operation


@dataclasses.dataclass(frozen=True)
class PlatformServices:
    """The platform services (each is a container attribute of the same name).

    Attributes:
        pings: Pings (the pipeline's health probe).
        api_keys: API keys and their verification.
        schedules: Schedules and their runs (fired by beat).
    """

    pings: PingService
    api_keys: ApiKeyService
    schedules: ScheduleService


def build(container: Container) -> PlatformServices:
    """Builds the platform services.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        The services.
    """
    from app.runtime.beat import schedule_service
    from domains.platform.pings.service import PingPolicy

    settings = container.settings
    pings = PingService(
        container.unit_of_work(MODULE),
        policy=PingPolicy(
            lease_seconds=settings.operation_lease_seconds,
            pending_deadline_seconds=settings.pending_deadline_seconds,
        ),
        progress_interval=settings.progress_interval_seconds,
    )
    api_keys = ApiKeyService(
        container.unit_of_work(MODULE),
        cache_seconds=settings.security.key_cache_seconds,
    )
    return PlatformServices(pings=pings, api_keys=api_keys, schedules=schedule_service(container))


class PingInput(BaseModel):
    """Arguments of the ``platform.ping`` workflow."""

    model_config = ConfigDict(extra="forbid")
    message: str = Field(default="", max_length=1000)
    sleep_seconds: float = Field(default=0.0, ge=0, le=3600)
    steps: int = Field(default=1, ge=1, le=1000)


async def _start_ping(container: Container, args: PingInput, context: StartContext) -> Operation:
    return await container.pings.create_ping(
        message=args.message,
        sleep_seconds=args.sleep_seconds,
        steps=args.steps,
        request_id=context.request_id,
        correlation_id=context.correlation_id,
        tenant=context.tenant,
    )


def workflows() -> list[Workflow]:
    """Returns the platform workflows (``platform.ping``)."""
    from app.workflows import Workflow

    return [
        Workflow(
            name="platform.ping",
            input_model=PingInput,
            start=_start_ping,
            description="Echo a message after optional work (a health probe of the pipeline).",
        )
    ]


def system_schedules(settings: Settings) -> list[BuiltinSchedule]:
    """Returns the platform's system schedules: relay sweep, stale sweeper, purge.

    Args:
        settings: Their initial intervals.

    Returns:
        The definitions.
    """
    s = settings.schedules
    return [
        BuiltinSchedule(
            id="system.outbox-relay",
            display_name="Outbox relay sweep: publish outbox rows the fast path left behind",
            task="platform.relay_sweep",
            interval_seconds=s.relay_sweep_interval_seconds,
        ),
        BuiltinSchedule(
            id="system.stale-sweeper",
            display_name="Stale-operation sweeper: re-dispatch lost operations",
            task="platform.sweep",
            interval_seconds=s.sweep_interval_seconds,
        ),
        BuiltinSchedule(
            id="system.purge-done",
            display_name=f"Purge done operations older than {s.retention_days:g} days",
            task="platform.purge_done",
            interval_seconds=s.purge_interval_seconds,
        ),
    ]


MODULE = DomainModule(
    name="platform",
    tables=tables,
    unit_of_work=PlatformUnitOfWork,
    services=build,
    routers=("api.v1.operations", "api.v1.pings", "api.v1.schedules"),
    # tasks.operations: the maintenance tasks of every domain's operations (sweep, purge).
    task_modules=("tasks.platform", "tasks.operations"),
    workflows=workflows,
    system_schedules=system_schedules,
)
"""The platform domain."""
