"""``DomainModule``: everything a domain plugs into the composition root, declared once.

Each ``app/wiring/<domain>.py`` defines one ``MODULE = DomainModule(...)``; the list of them is
:data:`app.wiring.MODULES`, and every other list of domains (``app.config.DOMAINS``, the tables,
Celery's task modules and queues, event subscribers, workflows, beat's system schedules, the API
routers, the container's services) derives from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from domains.operations.unit_of_work import DomainTables, SqlUnitOfWork

if TYPE_CHECKING:
    from app.config import Settings
    from app.container import Container
    from app.workflows import Workflow
    from domains.platform.schedules.service import BuiltinSchedule

S = TypeVar("S")
"""The domain's services object (a frozen dataclass, one typed field per service)."""
U = TypeVar("U", bound=SqlUnitOfWork)
"""The domain's unit of work class."""


def no_workflows() -> list[Workflow]:
    """Returns no workflows (the default of :attr:`DomainModule.workflows`).

    Returns:
        An empty list.
    """
    return []


def no_schedules(settings: Settings) -> list[BuiltinSchedule]:
    """Returns no system schedules (the default of :attr:`DomainModule.system_schedules`).

    Args:
        settings: Unused.

    Returns:
        An empty list.
    """
    return []


@dataclasses.dataclass(frozen=True)
class DomainModule(Generic[S, U]):
    """What one domain plugs into the app.

    Attributes:
        name: The domain: its package, schema, queue and task-name prefix.
        tables: Its tables (``domains/<name>/tables.py``).
        unit_of_work: Its unit of work class.
        services: Builds its services from the container, e.g. ``PlatformServices(pings=...)``;
            each field becomes a typed attribute of the container (``container.pings``).
        routers: Modules of its ``/v1`` API routers (each has a ``router``), imported by
            ``create_app()`` only: the CLI and the workers never import the API.
        task_modules: Modules holding its Celery tasks (imported by every worker).
        subscriptions: Integration event types (``fnmatch`` patterns, e.g. ``imports.*``) it
            consumes through its ``<name>.handle_event`` task.
        workflows: Returns the workflows a schedule can start (``app.workflows``).
        system_schedules: Returns beat's system schedules of the domain (interval tasks such
            as the stale-operation sweeper), from the settings.
    """

    name: str
    tables: DomainTables
    unit_of_work: type[U]
    services: Callable[[Container], S]
    routers: tuple[str, ...] = ()
    task_modules: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()
    workflows: Callable[[], Sequence[Workflow]] = no_workflows
    system_schedules: Callable[[Settings], Sequence[BuiltinSchedule]] = no_schedules
