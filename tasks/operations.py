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

    from app.runtime.outbox import OutboxPublisher

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
    """Retention: deletes done operations, schedule runs and answered pings older than
    ``schedules.retention_days``, and what ``CONVEYOR_RETENTION__*`` says has expired:
    published outbox rows, handled inbox rows, finished webhook deliveries with their
    attempts, received and applied event records, finished imports' files, and latency
    samples (folded into frozen day percentiles first).

    Returns:
        Rows (files) deleted, by kind.
    """
    import datetime as dt

    from domains.shared.clock import utcnow

    container = runtime.container
    settings = container.settings
    keep = settings.retention
    now = utcnow()
    days = dt.timedelta(days=1)
    batch = keep.batch_rows
    cutoff = now - settings.schedules.retention_days * days
    counts: dict[str, Any] = {
        "operations": runtime.run(container.operations.purge_done(cutoff, limit=batch)),
        "schedule_runs": runtime.run(container.schedules.purge_runs(cutoff)),
        "pings": runtime.run(container.pings.purge(cutoff, limit=batch)),
    }
    counts.update(
        runtime.run(
            container.operations.purge_messages(
                sent_before=now - dt.timedelta(hours=keep.outbox_sent_hours),
                handled_before=now - keep.events_days * days,
                limit=batch,
            )
        )
    )
    counts.update(
        runtime.run(
            container.webhooks.purge(
                ended_before=now - keep.webhook_deliveries_days * days,
                received_before=now - keep.events_days * days,
                limit=batch,
            )
        )
    )
    counts["applied_events"] = runtime.run(
        container.reports.purge_applied(now - keep.events_days * days, limit=batch)
    )
    counts["latency_samples"] = runtime.run(
        container.reports.compact_latencies((now - keep.latency_samples_days * days).date())
    )
    counts["import_files"] = runtime.run(
        container.imports.purge_files(now - keep.import_files_days * days, limit=batch)
    )
    if keep.vacuum_after_purge:
        counts["vacuumed"] = runtime.run(container.registry.vacuum_churned())
    return counts
