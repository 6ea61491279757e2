"""API keys, limits and docs exposure (``CONVEYOR_SECURITY__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SecuritySettings(BaseModel):
    """API keys, limits and docs exposure (``CONVEYOR_SECURITY__*``)."""

    model_config = ConfigDict(extra="forbid")
