"""Wiring of the webhooks domain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter

    from app.container import Container
    from app.workflows import Workflow
    from domains.operations.unit_of_work import SqlUnitOfWork

DOMAIN = "webhooks"
TASK_MODULES: list[str] = []
SUBSCRIPTIONS: list[str] = []


def uow_class() -> type[SqlUnitOfWork]:
    """Returns the webhooks unit of work class."""
    from domains.operations.unit_of_work import SqlUnitOfWork

    return SqlUnitOfWork


def build(container: Container) -> dict[str, Any]:
    """Builds the webhooks services.

    Args:
        container: The container (settings, registry, unit of work factories).

    Returns:
        Services by name.
    """
    return {}


def routers() -> list[APIRouter]:
    """Returns the webhooks routers."""
    return []


def workflows() -> list[Workflow]:
    """Returns the webhooks workflows a schedule can start."""
    return []
