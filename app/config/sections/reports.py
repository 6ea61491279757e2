"""Reports domain settings (``CONVEYOR_REPORTS__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportsSettings(BaseModel):
    """Reports domain settings (``CONVEYOR_REPORTS__*``)."""

    model_config = ConfigDict(extra="forbid")

    max_period_days: int = Field(
        default=366,
        ge=1,
        le=3660,
        description="Longest period (in days) one report may cover; longer requests are"
        " INVALID_ARGUMENT (CONVEYOR_REPORTS__MAX_PERIOD_DAYS).",
    )
    max_report_bytes: int = Field(
        default=50_000_000,
        ge=1024,
        le=1_000_000_000,
        description="Largest report file stored in PostgreSQL; a bigger one fails its operation"
        " with FAILED_PRECONDITION (CONVEYOR_REPORTS__MAX_REPORT_BYTES).",
    )
    event_max_retries: int = Field(
        default=10,
        ge=0,
        le=100,
        description="Retries (exponential backoff) of an integration event the projections could"
        " not apply, e.g. while PostgreSQL is down (CONVEYOR_REPORTS__EVENT_MAX_RETRIES).",
    )
