"""How fresh a read must be: the read-your-writes fence of the current request.

The API sets :data:`read_fence` for a request whose caller wrote recently (or passed the
consistency token of a write); the engine registry's replica routing reads it and serves the
request's replica reads from the primary until the replica has replayed past that moment.
Services know nothing of it: a context variable crosses the layers without new parameters.
"""

from __future__ import annotations

import contextvars

read_fence: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "conveyor_read_fence", default=None
)
"""Epoch seconds (wall clock) a replica read must be at least as fresh as; ``None``: any replica
within the configured maximum lag will do."""
