"""FastAPI dependencies: one per service of the container the composition root built.

Routes take a service as a typed parameter, e.g. ``pings: PingsDep``; the container is
``app.state.container`` (``app.container.Container``), the task control ``app.state.control``.
"""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import Depends, Request

from domains.imports.service import ImportsService
from domains.operations.service import OperationsService
from domains.platform.keys.service import ApiKeyService
from domains.platform.pings.service import PingService
from domains.platform.schedules.service import ScheduleService
from domains.reports.service import ReportsService
from domains.webhooks.service import WebhooksService


class TaskControl(Protocol):
    """Broker-side control the API may ask for."""

    def revoke(self, task_id: str) -> None:
        """Asks workers to skip a queued task."""


class ServiceContainer(Protocol):
    """What routers need of the container (``app.container.Container`` provides it)."""

    operations: OperationsService
    pings: PingService
    api_keys: ApiKeyService
    schedules: ScheduleService
    imports: ImportsService
    webhooks: WebhooksService
    reports: ReportsService


def container(request: Request) -> ServiceContainer:
    """Returns the container of the running app.

    Args:
        request: The current request.

    Returns:
        The container.
    """
    value: ServiceContainer = request.app.state.container
    return value


async def operations(request: Request) -> OperationsService:
    """Returns the operations service (every domain's operations).

    Args:
        request: The current request.

    Returns:
        The service.
    """
    return container(request).operations


async def pings(request: Request) -> PingService:
    """Returns the pings service.

    Args:
        request: The current request.

    Returns:
        The service.
    """
    return container(request).pings


async def api_keys(request: Request) -> ApiKeyService:
    """Returns the API keys service.

    Args:
        request: The current request.

    Returns:
        The service.
    """
    return container(request).api_keys


async def schedules(request: Request) -> ScheduleService:
    """Returns the schedules service.

    Args:
        request: The current request.

    Returns:
        The service.
    """
    return container(request).schedules


async def imports(request: Request) -> ImportsService:
    """Returns the imports service (datasets, imports, records).

    Args:
        request: The current request.

    Returns:
        The service.
    """
    return container(request).imports


async def webhooks(request: Request) -> WebhooksService:
    """Returns the webhooks service (endpoints, events, deliveries).

    Args:
        request: The current request.

    Returns:
        The service.
    """
    return container(request).webhooks


async def reports(request: Request) -> ReportsService:
    """Returns the reports service.

    Args:
        request: The current request.

    Returns:
        The service.
    """
    return container(request).reports


async def task_control(request: Request) -> TaskControl:
    """Returns the broker-side task control.

    Args:
        request: The current request.

    Returns:
        The control.
    """
    value: TaskControl = request.app.state.control
    return value


OperationsDep = Annotated[OperationsService, Depends(operations)]
PingsDep = Annotated[PingService, Depends(pings)]
ApiKeysDep = Annotated[ApiKeyService, Depends(api_keys)]
SchedulesDep = Annotated[ScheduleService, Depends(schedules)]
ImportsDep = Annotated[ImportsService, Depends(imports)]
WebhooksDep = Annotated[WebhooksService, Depends(webhooks)]
ReportsDep = Annotated[ReportsService, Depends(reports)]
TaskControlDep = Annotated[TaskControl, Depends(task_control)]


async def request_id(request: Request) -> str | None:
    """Returns the correlation id of the request (``X-Request-Id``).

    Args:
        request: The current request.

    Returns:
        The id.
    """
    return correlation_id(request)


def correlation_id(request: Request) -> str | None:
    """Returns the correlation id of the request: :func:`request_id` as a call (hot routes).

    Args:
        request: The current request.

    Returns:
        The id.
    """
    return getattr(request.state, "request_id", None)
