"""Reports domain settings (``CONVEYOR_REPORTS__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ReportsSettings(BaseModel):
    """Reports domain settings (``CONVEYOR_REPORTS__*``)."""

    model_config = ConfigDict(extra="forbid")
