"""Wiring of the platform domain (pings; schedules and API keys join here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from fastapi import APIRouter

    from app.container import Container
    from app.workflows import Workflow
    from domains.operations.unit_of_work import SqlUnitOfWork

DOMAIN = "platform"
TASK_MODULES: list[str] = ["tasks.platform", "tasks.operations"]
SUBSCRIPTIONS: list[str] = []


def uow_class() -> type[SqlUnitOfWork]:
    """Returns the platform unit of work class."""
    from domains.platform.unit_of_work import PlatformUnitOfWork

    return PlatformUnitOfWork


def build(container: Container) -> dict[str, Any]:
    """Builds the platform services.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        Services by name.
    """
    from domains.platform.keys import ApiKeyService
    from domains.platform.service import PingPolicy, PingService

    settings = container.settings
    pings = PingService(
        container.uow_factory(DOMAIN),  # type: ignore[arg-type]
        policy=PingPolicy(
            lease_seconds=settings.operation_lease_seconds,
            pending_deadline_seconds=settings.pending_deadline_seconds,
        ),
        progress_interval=settings.progress_interval_seconds,
    )
    api_keys = ApiKeyService(
        container.uow_factory(DOMAIN),
        cache_seconds=settings.security.key_cache_seconds,
    )
    from app.beat import schedule_service

    return {"pings": pings, "api_keys": api_keys, "schedules": schedule_service(container)}


def routers() -> list[APIRouter]:
    """Returns the platform routers."""
    from api.v1 import operations, pings, schedules

    return [operations.router, pings.router, schedules.router]


class PingInput(BaseModel):
    """Arguments of the ``platform.ping`` workflow."""

    model_config = ConfigDict(extra="forbid")
    message: str = Field(default="", max_length=1000)
    sleep_seconds: float = Field(default=0.0, ge=0, le=3600)
    steps: int = Field(default=1, ge=1, le=1000)


async def _start_ping(container: Container, args: PingInput, context: Any) -> Any:
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
