"""FastAPI dependencies: the services the composition root put on ``app.state``."""

from __future__ import annotations

from typing import Protocol

from fastapi import Request

from domains.operations.service import OperationsService
from domains.platform.service import PingService


class TaskControl(Protocol):
    """Broker-side control the API may ask for."""

    def revoke(self, task_id: str) -> None:
        """Asks workers to skip a queued task."""


class Services(Protocol):
    """What routers need; provided by ``app.main.create_app``."""

    operations: OperationsService
    pings: PingService
    control: TaskControl


async def services(request: Request) -> Services:
    """Returns the services of the running app.

    Args:
        request: The current request.

    Returns:
        The services.
    """
    value: Services = request.app.state.services
    return value


async def request_id(request: Request) -> str | None:
    """Returns the correlation id of the request (``X-Request-Id``).

    Args:
        request: The current request.

    Returns:
        The id.
    """
    return getattr(request.state, "request_id", None)
