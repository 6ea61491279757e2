"""Beat and schedules settings (``CONVEYOR_SCHEDULES__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SchedulesSettings(BaseModel):
    """Beat and schedules settings (``CONVEYOR_SCHEDULES__*``)."""

    model_config = ConfigDict(extra="forbid")
