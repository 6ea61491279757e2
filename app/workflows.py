"""Workflows by name: what schedules (and operators) can start without an HTTP call.

Each domain's wiring module lists its workflows (``DomainModule.workflows``); a workflow has an input
model (validated when a schedule is created) and a ``start`` coroutine that creates the
Operation through the domain's service (so the outbox path and AIP-155 idempotency apply: a
scheduler passes ``request_id = "schedule:<id>:<fire time>"`` and a slot can never run twice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.wiring import modules

if TYPE_CHECKING:
    from app.container import Container
    from domains.operations.model import Operation


@dataclasses.dataclass(frozen=True)
class StartContext:
    """Who starts a workflow and how.

    Attributes:
        tenant: Tenant the operation belongs to.
        request_id: AIP-155 request id (makes the start idempotent).
        correlation_id: Id carried into logs.
    """

    tenant: str = "default"
    request_id: str | None = None
    correlation_id: str | None = None


@dataclasses.dataclass(frozen=True)
class Workflow:
    """A startable workflow.

    Attributes:
        name: ``<domain>.<name>``, e.g. ``reports.generate``.
        input_model: Pydantic model of its arguments (``extra="forbid"``).
        start: Creates the operation: ``await start(container, args, context)``.
        description: One line for the API and docs.
    """

    name: str
    input_model: type[BaseModel]
    start: Callable[[Container, Any, StartContext], Awaitable[Operation]]
    description: str = ""


def registry() -> dict[str, Workflow]:
    """Returns every domain's workflows by name.

    Returns:
        Workflows by name.
    """
    found: dict[str, Workflow] = {}
    for domain in modules():
        for workflow in domain.workflows():
            found[workflow.name] = workflow
    return found
