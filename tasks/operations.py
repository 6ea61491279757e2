"""Platform-wide operation upkeep tasks (queue ``platform``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from celery import shared_task

from tasks.runtime import runtime


@shared_task(name="platform.sweep", acks_late=True)
def sweep() -> dict[str, Any]:
    """Re-dispatches lost operations and fails those out of dispatches.

    Returns:
        Counts of what was done.
    """
    report = runtime.run(runtime.container.operations.sweep())
    return dataclasses.asdict(report)
