"""Webhooks domain settings (``CONVEYOR_WEBHOOKS__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class WebhooksSettings(BaseModel):
    """Webhooks domain settings (``CONVEYOR_WEBHOOKS__*``)."""

    model_config = ConfigDict(extra="forbid")
