"""Retention settings (``CONVEYOR_RETENTION__*``): how long finished rows and files are kept.

The ``system.purge-done`` schedule (task ``platform.purge_done``) deletes what is older, in
batches; done operations and schedule runs follow ``CONVEYOR_SCHEDULES__RETENTION_DAYS``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetentionSettings(BaseModel):
    """Retention settings (``CONVEYOR_RETENTION__*``)."""

    model_config = ConfigDict(extra="forbid")

    outbox_sent_hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 3650,
        description="Published outbox rows are deleted this long after publishing (the sweeper"
        " reads a PENDING operation's last publish, so keep it well above the pending deadline"
        " times max dispatches).",
    )
    webhook_deliveries_days: float = Field(
        default=30.0,
        gt=0,
        le=3650,
        description="Finished webhook deliveries (SUCCEEDED, FAILED, DEAD) and their attempts"
        " are deleted this long after they ended (no replay past it).",
    )
    events_days: float = Field(
        default=30.0,
        gt=0,
        le=3650,
        description="Received events (webhooks), applied event ids (reports) and handled inbox"
        " rows are deleted after this long; keep it longer than any redelivery of an event.",
    )
    latency_samples_days: float = Field(
        default=2.0,
        gt=0,
        le=3650,
        description="Latency samples of successful webhook deliveries (reports) are kept this"
        " long: the days before it are folded into frozen p50/p95 figures per endpoint-day and"
        " tenant-day, then their samples are deleted (reports show the same figures).",
    )
    import_files_days: float = Field(
        default=7.0,
        gt=0,
        le=3650,
        description="Uploaded and fetched files of finished imports are deleted this long after"
        " the import ended (the records, counts and row errors stay; a :retry then needs a"
        " source_uri).",
    )
    vacuum_after_purge: bool = Field(
        default=True,
        description="After a purge, VACUUM (ANALYZE) the tables whose dead rows reached 1,000"
        " and a fifth of their live rows, as autovacuum would: on a server where it is off or"
        " lags, the space of purged and updated rows is otherwise never reused.",
    )
    batch_rows: int = Field(
        default=5000,
        ge=1,
        le=1_000_000,
        description="Rows deleted per statement (short transactions); each purge repeats"
        " batches until nothing old is left.",
    )
