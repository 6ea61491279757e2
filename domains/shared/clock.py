"""Time source: always timezone-aware UTC."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Returns the current time in UTC (timezone-aware).

    Returns:
        The current UTC time.
    """
    return dt.datetime.now(dt.UTC)
