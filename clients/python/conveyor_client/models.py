"""Typed models of the Conveyor API's resources (pydantic, unknown fields kept).

Field names are the API's JSON names (snake_case); ``@type`` is ``type_url``. Models accept
fields a newer server adds, so an older client keeps working.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
"""Operation states after which nothing changes."""


class Model(BaseModel):
    """Base of every model: extra fields kept, populated by name or alias."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Progress(Model):
    """Progress of an operation."""

    done: int = 0
    total: int | None = None
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or ``None`` when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


class OperationMetadata(Model):
    """What an operation is and how far it got."""

    type_url: str = Field(default="", alias="@type")
    domain: str
    type: str
    target: str = ""
    state: str
    progress: Progress = Field(default_factory=Progress)
    attempt: int = 0
    create_time: dt.datetime
    update_time: dt.datetime
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    heartbeat_time: dt.datetime | None = None
    dispatch_count: int = 0
    correlation_id: str | None = None


class Status(Model):
    """``google.rpc.Status`` of a failed operation."""

    code: int
    status: str
    message: str
    details: list[dict[str, Any]] = []


class Operation(Model):
    """A long-running operation (AIP-151)."""

    name: str
    metadata: OperationMetadata
    done: bool
    error: Status | None = None
    response: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        """``{domain}.{id}``: the operation's name without ``operations/``."""
        return self.name.removeprefix("operations/")

    @property
    def state(self) -> str:
        """The operation's state (``metadata.state``)."""
        return self.metadata.state


class Ping(Model):
    """A diagnostic ping and its reply."""

    name: str
    message: str
    reply: str | None = None
    worker: str | None = None
    create_time: dt.datetime
    complete_time: dt.datetime | None = None
    operation: str
    state: str
    done: bool


class FieldSpec(Model):
    """A typed field of a dataset's schema."""

    name: str
    type: str
    required: bool = False
    values: list[str] = []


class Dataset(Model):
    """A typed, queryable dataset."""

    name: str
    id: str
    display_name: str
    fields: list[FieldSpec]
    key_field: str
    source_uri: str | None = None
    record_count: int = 0
    create_time: dt.datetime
    update_time: dt.datetime


class Import(Model):
    """One file imported into a dataset."""

    name: str
    id: str
    dataset: str
    state: str
    operation: str
    format: str
    source_uri: str | None = None
    size_bytes: int = 0
    rows_total: int | None = None
    rows_accepted: int | None = None
    rows_rejected: int | None = None
    errors_uri: str = ""
    error: str | None = None
    create_time: dt.datetime
    complete_time: dt.datetime | None = None


class RowError(Model):
    """A rejected row's problem."""

    line: int
    field: str
    reason: str
    raw_value: str


class Record(Model):
    """A record of a dataset."""

    name: str
    key: str
    data: dict[str, Any]
    import_: str = Field(alias="import")
    update_time: dt.datetime


class Breaker(Model):
    """Circuit breaker of an endpoint."""

    state: str
    consecutive_failures: int = 0
    failing_since: dt.datetime | None = None
    until: dt.datetime | None = None


class Endpoint(Model):
    """A webhook endpoint."""

    name: str
    id: str
    url: str
    description: str = ""
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = None
    rate_limit: float | None = None
    breaker: Breaker
    previous_secret_expire_time: dt.datetime | None = None
    create_time: dt.datetime
    update_time: dt.datetime
    secret: str | None = Field(
        default=None, description="Only on create and rotate: the signing secret (shown once)."
    )


class Event(Model):
    """A published event."""

    name: str
    id: str
    type: str
    time: dt.datetime
    deliveries: int


class Delivery(Model):
    """One event's delivery to one endpoint."""

    name: str
    id: str
    endpoint: str
    event_id: str
    event_type: str
    state: str
    attempts: int
    next_attempt_time: dt.datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    create_time: dt.datetime
    update_time: dt.datetime
    end_time: dt.datetime | None = None


class Attempt(Model):
    """One HTTP attempt of a delivery."""

    attempt: int
    time: dt.datetime
    status_code: int | None = None
    duration_ms: float
    response_body: str = ""
    error: str | None = None


class Schedule(Model):
    """A schedule that starts a workflow by cron or interval."""

    name: str
    id: str
    display_name: str = ""
    workflow: str | None = None
    task: str | None = None
    args: dict[str, Any] = {}
    cron: str | None = None
    interval_seconds: float | None = None
    time_zone: str = "UTC"
    enabled: bool
    catch_up: bool = False
    system: bool = False
    next_run_time: dt.datetime | None = None
    last_run_time: dt.datetime | None = None
    last_operation: str | None = None
    create_time: dt.datetime
    update_time: dt.datetime


class ScheduleRun(Model):
    """One firing of a schedule."""

    schedule: str
    fire_time: dt.datetime
    state: str
    operation: str | None = None
    manual: bool = False
    fired_by: str = ""
    attempts: int = 0
    error: str | None = None


class Period(Model):
    """The period a report covers."""

    label: str
    start_date: dt.date
    end_date: dt.date


class Report(Model):
    """A generated report."""

    name: str
    type: str
    format: str
    period: Period
    state: str
    operation: str
    create_time: dt.datetime
    complete_time: dt.datetime | None = None
    size_bytes: int | None = None
    row_count: int | None = None
    content_type: str = ""
    download_uri: str | None = None
    error: str | None = None


class Page(BaseModel, Generic[T]):
    """One page of a list call (AIP-158), for callers that page themselves (UIs, CLIs).

    Attributes:
        items: The page's items.
        next_page_token: Pass as ``page_token`` for the next page; empty at the end.
    """

    items: list[T]
    next_page_token: str = ""
