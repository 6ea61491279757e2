"""Helpers for the observability tests: an API subprocess on a free port."""

from __future__ import annotations

import json
import re
from typing import Any

from app.runtime.embedded import find_free_port


def start_api(stack: Any, env: dict[str, str] | None = None) -> tuple[Any, str]:
    """Spawns `conveyor api` on the stack's broker; returns the process and its URL (not waited)."""
    port = find_free_port()
    proc = stack.spawn("api", "--port", str(port), env=env, name="api")
    return proc, f"http://127.0.0.1:{port}"


_UP_PREFIX = re.compile(r"^[\w.-]+\s*\|\s?")


def json_lines(text: str) -> list[dict[str, Any]]:
    """The lines of a log that are JSON objects (a worker also prints its banner as plain text).

    Lines relayed by `conveyor up` carry its process prefix (``imports  | {...}``): it is
    dropped.
    """
    out = []
    for line in text.splitlines():
        line = _UP_PREFIX.sub("", line.strip())
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out
