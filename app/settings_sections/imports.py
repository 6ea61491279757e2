"""Imports domain settings (``CONVEYOR_IMPORTS__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ImportsSettings(BaseModel):
    """Imports domain settings (``CONVEYOR_IMPORTS__*``)."""

    model_config = ConfigDict(extra="forbid")
