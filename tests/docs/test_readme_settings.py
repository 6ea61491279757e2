"""The README's configuration tables name every setting (they are the operator's reference)."""

from __future__ import annotations

import pathlib

from pydantic import BaseModel

from app.config import Settings

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def _variables() -> list[str]:
    names = []
    for field, info in Settings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and field != "db":
            names += [f"CONVEYOR_{field.upper()}__{sub.upper()}" for sub in annotation.model_fields]
        elif field == "db":
            names.append("CONVEYOR_DB__<DOMAIN>__URL")
        else:
            names.append(f"CONVEYOR_{field.upper()}")
    return names


def test_every_setting_is_in_the_readme():
    text = README.read_text()
    missing = [name for name in _variables() if name not in text]
    # Backoff bounds share one row: `CONVEYOR_RETRY_BACKOFF_BASE_SECONDS` / `_MAX_SECONDS`.
    missing = [m for m in missing if m != "CONVEYOR_RETRY_BACKOFF_MAX_SECONDS"]
    assert not missing, f"add these settings to the README configuration table: {missing}"
