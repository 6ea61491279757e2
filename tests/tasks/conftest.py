"""Fixtures of the task-level tests."""

from __future__ import annotations

from typing import Any

import pytest

from app.adapters.celery_app import MIRRORED_TASKS


@pytest.fixture
def result_mirror(celery_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``CONVEYOR_RESULT_MIRROR=true`` for the in-process worker: the per-job tasks store their
    outcome and progress in the result backend (Celery reads ``ignore_result`` per call)."""
    for name in MIRRORED_TASKS:
        monkeypatch.setattr(celery_app.tasks[name], "ignore_result", False)
