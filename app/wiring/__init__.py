"""Per-domain wiring: each domain's module here says what the composition root plugs in.

A wiring module (``app/wiring/<domain>.py``) defines:

- ``TASK_MODULES``: modules holding the domain's Celery tasks (imported by every worker);
- ``SUBSCRIPTIONS``: integration event type patterns (``fnmatch``, e.g. ``imports.*``) the
  domain consumes through its ``<domain>.handle_event`` task;
- ``uow_class()``: the domain's unit of work class;
- ``build(container)``: the domain's services by name (``container.services[name]``);
- ``routers()``: the domain's ``/v1`` API routers.

Adding a domain means adding its module to :data:`WIRING_MODULES`.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
from types import ModuleType

WIRING_MODULES: tuple[str, ...] = (
    "app.wiring.platform",
    "app.wiring.imports",
    "app.wiring.webhooks",
    "app.wiring.reports",
)
"""Wiring modules, in domain order."""


@functools.cache
def wirings() -> tuple[ModuleType, ...]:
    """Returns the wiring modules, imported once.

    Returns:
        The modules.
    """
    return tuple(importlib.import_module(name) for name in WIRING_MODULES)


def task_modules() -> list[str]:
    """Returns every domain's task modules.

    Returns:
        Module names.
    """
    return [module for wiring in wirings() for module in wiring.TASK_MODULES]


def subscribers(event_type: str) -> list[str]:
    """Returns the domains consuming ``event_type``.

    Args:
        event_type: E.g. ``imports.ImportCompleted``.

    Returns:
        Subscriber domains (each gets the event on its ``<domain>.handle_event`` task).
    """
    return [
        wiring.DOMAIN
        for wiring in wirings()
        if any(fnmatch.fnmatchcase(event_type, pattern) for pattern in wiring.SUBSCRIPTIONS)
    ]
