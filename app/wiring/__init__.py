"""The domains of the app, listed once: :data:`MODULES`.

Each ``app/wiring/<domain>.py`` declares what its domain plugs into the composition root as one
``MODULE = DomainModule(...)`` (:class:`app.wiring.module.DomainModule`: tables, unit of work,
services, routers, task modules, event subscriptions, workflows, system schedules). Everything
that lists domains derives from :data:`MODULES`: :data:`DOMAINS` (``app.config.DOMAINS``), the
container's tables and services, Celery's task modules and queues, the event subscribers, the
workflows registry, beat's system schedules and the API routers.

Adding a domain means adding its wiring module to :data:`MODULES` (``conveyor new-domain`` does).
This package stays cheap to import (settings read :data:`DOMAINS`); :func:`modules` imports the
wiring modules on first use.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings
    from app.wiring.module import DomainModule
    from domains.operations.unit_of_work import DomainTables
    from domains.platform.schedules.service import BuiltinSchedule

MODULES: tuple[str, ...] = (
    "app.wiring.platform",
    "app.wiring.imports",
    "app.wiring.webhooks",
    "app.wiring.reports",
)
"""Wiring modules, in domain order: the one list of the app's domains."""

DOMAINS: tuple[str, ...] = tuple(path.rpartition(".")[2] for path in MODULES)
"""Every bounded context (the last part of its wiring module's name); each has its schema, queue
and task-name prefix of the same name."""


@functools.cache
def modules() -> tuple[DomainModule[Any, Any], ...]:
    """Returns each domain's ``MODULE``, imported once, in :data:`MODULES` order.

    Returns:
        The domain modules.

    Raises:
        ValueError: If a wiring module declares another domain name than its file name.
    """
    found: list[DomainModule[Any, Any]] = []
    for path, name in zip(MODULES, DOMAINS, strict=True):
        declared: DomainModule[Any, Any] = importlib.import_module(path).MODULE
        if declared.name != name:
            raise ValueError(f"{path}: MODULE.name is {declared.name!r}, expected {name!r}")
        found.append(declared)
    return tuple(found)


def by_name(domain: str) -> DomainModule[Any, Any]:
    """Returns the module of ``domain``.

    Args:
        domain: One of :data:`DOMAINS`.

    Returns:
        Its module.

    Raises:
        KeyError: If there is no such domain.
    """
    for found in modules():
        if found.name == domain:
            return found
    raise KeyError(domain)


def domain_tables() -> dict[str, DomainTables]:
    """Returns each domain's tables.

    Returns:
        Tables by domain.
    """
    return {found.name: found.tables for found in modules()}


def task_modules() -> list[str]:
    """Returns every domain's task modules.

    Returns:
        Module names.
    """
    return [name for found in modules() for name in found.task_modules]


def subscribers(event_type: str) -> list[str]:
    """Returns the domains consuming ``event_type``.

    Args:
        event_type: E.g. ``imports.ImportCompleted``.

    Returns:
        Subscriber domains (each gets the event on its ``<domain>.handle_event`` task).
    """
    return [
        found.name
        for found in modules()
        if any(fnmatch.fnmatchcase(event_type, pattern) for pattern in found.subscriptions)
    ]


def system_schedules(settings: Settings) -> list[BuiltinSchedule]:
    """Returns every domain's system schedules (beat's interval tasks).

    Args:
        settings: Their initial intervals.

    Returns:
        The definitions, in domain order.
    """
    return [schedule for found in modules() for schedule in found.system_schedules(settings)]
