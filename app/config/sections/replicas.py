"""Read replica routing settings (``CONVEYOR_REPLICAS__*``).

They matter only when a replica is configured (``CONVEYOR_REPLICA_URL`` or
``CONVEYOR_DB__<DOMAIN>__REPLICA_URL``); see docs/operations.md, "Read replicas".
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReplicasSettings(BaseModel):
    """Read replica routing settings (``CONVEYOR_REPLICAS__*``)."""

    model_config = ConfigDict(extra="forbid")

    max_lag_seconds: float = Field(
        default=5.0,
        ge=0,
        le=86400,
        description="Most staleness a replica read may have: when a replica is further behind"
        " its primary (measured by WAL position), reads go to the primary.",
    )
    check_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How long a replica's measured lag is trusted before it is measured again"
        " (one query on the primary and one on the replica, when reads come).",
    )
    retry_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="After a replica failed to answer, reads go to the primary this long"
        " (breaker open) before the replica is tried again.",
    )
    connect_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Connect timeout to a replica (and of the lag query): an unreachable replica"
        " costs a read at most this before it falls back to the primary.",
    )
    read_your_writes: bool = Field(
        default=True,
        description="Lists by an API key that wrote recently (or that sends the"
        " X-Conveyor-Consistency-Token of a write) read the primary until the replica has"
        " replayed that write.",
    )
