"""Beat and schedules settings (``CONVEYOR_SCHEDULES__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SchedulesSettings(BaseModel):
    """Beat and schedules settings (``CONVEYOR_SCHEDULES__*``)."""

    model_config = ConfigDict(extra="forbid")

    sync_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Longest the beat sleeps before reading the schedules table again: an API"
        " change takes effect within this time, without restarting beat.",
    )
    lease_seconds: float = Field(
        default=15.0,
        ge=1,
        le=600,
        description="Beat leader lease: renewed every third of it; after a leader dies another"
        " beat takes over within this time.",
    )
    leader_name: str = Field(
        default="beat",
        min_length=1,
        max_length=100,
        description="Name of the leader lease row (beats sharing it elect one leader).",
    )
    min_interval_seconds: float = Field(
        default=1.0,
        ge=0.1,
        le=86400,
        description="Smallest interval_seconds a user schedule may have.",
    )
    max_catch_up: int = Field(
        default=100,
        ge=1,
        le=10000,
        description="Most missed slots a catch_up schedule fires at once after downtime.",
    )
    start_attempts: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Failed attempts to start a fired workflow (database down...) before the"
        " run is recorded as FAILED.",
    )
    retention_days: float = Field(
        default=30.0,
        gt=0,
        le=3650,
        description="Done operations and schedule runs older than this are purged by the"
        " system.purge-done schedule.",
    )
    sweep_interval_seconds: float = Field(
        default=30.0,
        ge=0.1,
        le=86400,
        description="Initial interval of the system.stale-sweeper schedule (editable by API).",
    )
    relay_sweep_interval_seconds: float = Field(
        default=30.0,
        ge=0.1,
        le=86400,
        description="Initial interval of the system.outbox-relay schedule (editable by API).",
    )
    purge_interval_seconds: float = Field(
        default=3600.0,
        ge=0.1,
        le=86400 * 7,
        description="Initial interval of the system.purge-done schedule (editable by API).",
    )
    breaker_probe_interval_seconds: float = Field(
        default=60.0,
        ge=0.1,
        le=86400,
        description="Initial interval of the system.webhook-breaker-probes schedule.",
    )
    daily_digest: bool = Field(
        default=True,
        description="Create the default daily digest schedule (reports.generate at 06:00 UTC)"
        " once, when the reports.generate workflow exists.",
    )
