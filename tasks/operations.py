"""Platform-wide operation upkeep tasks (queue ``platform``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from celery import shared_task

from tasks.runtime import runtime


# Housekeeping every few seconds: no task events (kept out of Flower), quiet logs.
@shared_task(name="platform.sweep", acks_late=True, send_events=False)
def sweep() -> dict[str, Any]:
    """Re-dispatches lost operations and fails those out of dispatches.

    Returns:
        Counts of what was done.
    """
    report = runtime.run(runtime.container.operations.sweep())
    return dataclasses.asdict(report)


_publishers: dict[int, Any] = {}


def _publisher() -> Any:
    # One publish-only Celery app per worker process (built after fork, like the runtime).
    import os

    from app.outbox import OutboxPublisher

    pid = os.getpid()
    if pid not in _publishers:
        container = runtime.container
        _publishers.clear()
        _publishers[pid] = OutboxPublisher(container.registry, container.settings)
    return _publishers[pid]


# Housekeeping every few seconds: no task events (kept out of Flower), quiet logs.
@shared_task(name="platform.relay_sweep", acks_late=True, send_events=False)
def relay_sweep() -> dict[str, Any]:
    """Publishes outbox rows the fast path and the relay process left behind (a backstop for
    deployments running no ``conveyor relay``).

    Returns:
        Rows published.
    """
    return {"published": runtime.run(_publisher().relay_once())}


# Housekeeping every few seconds: no task events (kept out of Flower), quiet logs.
@shared_task(name="platform.purge_done", acks_late=True, send_events=False)
def purge_done() -> dict[str, Any]:
    """Deletes done operations and schedule runs older than ``schedules.retention_days``.

    Returns:
        Rows deleted.
    """
    import datetime as dt

    from domains.shared.clock import utcnow

    container = runtime.container
    cutoff = utcnow() - dt.timedelta(days=container.settings.schedules.retention_days)
    operations = runtime.run(container.operations.purge_done(cutoff))
    runs = runtime.run(container.services["schedules"].purge_runs(cutoff))
    return {"operations": operations, "schedule_runs": runs}
