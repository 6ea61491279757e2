"""Integration events of the imports domain (consumed by webhooks and reports).

The keys of ``data`` are a contract with other teams: change them only with them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from domains.imports.model import Import
from domains.shared.events import IntegrationEvent

SOURCE = "imports"
IMPORT_COMPLETED = "imports.ImportCompleted"
IMPORT_FAILED = "imports.ImportFailed"


def _ids(item: Import, operation: str, display_name: str | None = None) -> dict[str, Any]:
    return {
        "dataset_id": str(item.dataset_id),
        "dataset": f"datasets/{item.dataset_id}",
        # What people call the dataset (reports show it next to the id).
        **({"dataset_display_name": display_name} if display_name else {}),
        "import_id": str(item.id),
        "import": item.name,
        "operation": operation,
    }


def import_completed(
    item: Import, operation: str, completed: dt.datetime, dataset_display_name: str | None = None
) -> IntegrationEvent:
    """Builds ``imports.ImportCompleted``.

    Args:
        item: The finished import (counts set).
        operation: Its operation name.
        completed: Completion time.
        dataset_display_name: The dataset's display name.

    Returns:
        The event; data = ``dataset_id, dataset, dataset_display_name, import_id, import,
        operation, rows_total, rows_accepted, rows_rejected, completed_time``.
    """
    data = {
        **_ids(item, operation, dataset_display_name),
        "rows_total": item.rows_total or 0,
        "rows_accepted": item.rows_accepted or 0,
        "rows_rejected": item.rows_rejected or 0,
        "completed_time": completed.isoformat(),
    }
    return IntegrationEvent(type=IMPORT_COMPLETED, data=data, source=SOURCE, tenant=item.tenant)


def import_failed(
    item: Import, operation: str, error: str, dataset_display_name: str | None = None
) -> IntegrationEvent:
    """Builds ``imports.ImportFailed``.

    Args:
        item: The failed import.
        operation: Its operation name.
        error: What went wrong (the operation's error message).
        dataset_display_name: The dataset's display name, when still known.

    Returns:
        The event; data = ``dataset_id, dataset, dataset_display_name, import_id, import,
        operation, error``.
    """
    data = {**_ids(item, operation, dataset_display_name), "error": error}
    return IntegrationEvent(type=IMPORT_FAILED, data=data, source=SOURCE, tenant=item.tenant)
