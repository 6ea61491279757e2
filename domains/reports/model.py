"""Reports: what a report asks for (type, period, format), its lifecycle, and how it is rendered.

No I/O here: the repository loads and stores, the service orchestrates.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import enum
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from domains.shared.errors import FailedPrecondition, InvalidArgument


class ReportType(enum.StrEnum):
    """What a report tabulates."""

    DATASET_DAILY = "dataset_daily"
    """One row per dataset and day: imports completed/failed, rows accepted/rejected."""
    ENDPOINT_DAILY = "endpoint_daily"
    """One row per webhook endpoint and day: deliveries succeeded/failed/dead, p50/p95 latency."""
    DIGEST = "digest"
    """One row per day with the tenant's totals of both (days without activity show zeros)."""


class ReportFormat(enum.StrEnum):
    """File format of a report."""

    CSV = "csv"
    JSON = "json"

    @property
    def content_type(self) -> str:
        """The HTTP content type of the file."""
        return "text/csv; charset=utf-8" if self is ReportFormat.CSV else "application/json"


class ReportStatus(enum.StrEnum):
    """Stored status of a report (the operation adds RUNNING, CANCELLING, CANCELLED)."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


RELATIVE_PERIODS = ("yesterday", "today")
"""Period names resolved against the UTC date when the report is requested."""


@dataclasses.dataclass(frozen=True)
class Period:
    """A range of UTC days, both ends included.

    Attributes:
        start_date: First day.
        end_date: Last day.
        label: ``yesterday``, ``today`` or ``custom`` (how it was asked for).
    """

    start_date: dt.date
    end_date: dt.date
    label: str = "custom"

    @property
    def days(self) -> int:
        """Number of days in the period."""
        return (self.end_date - self.start_date).days + 1

    @property
    def start_time(self) -> dt.datetime:
        """Start of the first day (UTC)."""
        return dt.datetime.combine(self.start_date, dt.time(), tzinfo=dt.UTC)

    @property
    def end_time(self) -> dt.datetime:
        """Start of the day after the last day (UTC, exclusive)."""
        return dt.datetime.combine(self.end_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)

    def to_dict(self) -> dict[str, str]:
        """Returns the JSON form.

        Returns:
            ``{"label", "start_date", "end_date"}`` with ISO dates.
        """
        return {
            "label": self.label,
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
        }

    @classmethod
    def resolve(cls, spec: object, today: dt.date, *, max_days: int) -> Period:
        """Turns a requested period into dates.

        Args:
            spec: ``"yesterday"``, ``"today"`` or ``{"start_date": "YYYY-MM-DD", "end_date":
                "YYYY-MM-DD"}`` (dates or ISO strings).
            today: The current UTC date.
            max_days: Longest period allowed.

        Returns:
            The period.

        Raises:
            InvalidArgument: Saying what is wrong with the period.
        """
        if spec == "yesterday":
            day = today - dt.timedelta(days=1)
            return cls(day, day, "yesterday")
        if spec == "today":
            return cls(today, today, "today")
        if not isinstance(spec, Mapping):
            raise InvalidArgument(
                'period must be "yesterday", "today" or {"start_date": "YYYY-MM-DD",'
                f' "end_date": "YYYY-MM-DD"}} (got {spec!r})',
                reason="INVALID_PERIOD",
                metadata={"field": "period"},
            )
        unknown = set(spec) - {"start_date", "end_date"}
        if unknown:
            raise InvalidArgument(
                f"period has unknown field(s) {sorted(unknown)}; use start_date and end_date",
                reason="INVALID_PERIOD",
                metadata={"field": "period"},
            )
        start = _date(spec.get("start_date"), "period.start_date")
        end = _date(spec.get("end_date"), "period.end_date")
        if end < start:
            raise InvalidArgument(
                f"period.end_date {end} is before period.start_date {start}; swap them",
                reason="INVALID_PERIOD",
                metadata={"field": "period.end_date"},
            )
        period = cls(start, end, "custom")
        if period.days > max_days:
            raise InvalidArgument(
                f"period covers {period.days} days; at most {max_days} are allowed, request"
                " several shorter reports",
                reason="PERIOD_TOO_LONG",
                metadata={"field": "period", "max_days": str(max_days)},
            )
        return period


def _date(value: object, field: str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise InvalidArgument(
            f"{field} must be a date (YYYY-MM-DD), not a timestamp",
            reason="INVALID_PERIOD",
            metadata={"field": field},
        )
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidArgument(
        f"{field} must be a date like 2026-11-24 (got {value!r})",
        reason="INVALID_PERIOD",
        metadata={"field": field},
    )


def parse_type(value: str) -> ReportType:
    """Parses a report type.

    Args:
        value: E.g. ``digest``.

    Returns:
        The type.

    Raises:
        InvalidArgument: Listing the valid types.
    """
    try:
        return ReportType(value)
    except ValueError:
        raise InvalidArgument(
            f"type {value!r} is unknown; use one of {', '.join(t.value for t in ReportType)}",
            reason="INVALID_REPORT_TYPE",
            metadata={"field": "type"},
        ) from None


def parse_format(value: str) -> ReportFormat:
    """Parses a report format.

    Args:
        value: ``csv`` or ``json``.

    Returns:
        The format.

    Raises:
        InvalidArgument: Listing the valid formats.
    """
    try:
        return ReportFormat(value)
    except ValueError:
        raise InvalidArgument(
            f"format {value!r} is unknown; use csv or json",
            reason="INVALID_REPORT_FORMAT",
            metadata={"field": "format"},
        ) from None


@dataclasses.dataclass
class Report:
    """A requested report and, once generated, a description of its file.

    Attributes:
        id: Report id (the resource is ``reports/{id}``).
        tenant: Owning tenant.
        type: What it tabulates.
        format: File format.
        period_label: How the period was asked for (``yesterday``, ``today``, ``custom``).
        start_date: First day covered.
        end_date: Last day covered.
        operation_id: The operation generating it.
        create_time: When it was requested.
        status: Stored status.
        complete_time: When the file was stored.
        size_bytes: File size.
        row_count: Data rows in the file.
        error: Why generation failed.
        operation_state: State of the operation (read with the report, never written).
    """

    id: uuid.UUID
    tenant: str
    type: ReportType
    format: ReportFormat
    period_label: str
    start_date: dt.date
    end_date: dt.date
    operation_id: uuid.UUID
    create_time: dt.datetime
    status: ReportStatus = ReportStatus.PENDING
    complete_time: dt.datetime | None = None
    size_bytes: int | None = None
    row_count: int | None = None
    error: str | None = None
    operation_state: str | None = None

    @property
    def name(self) -> str:
        """Resource name ``reports/{id}``."""
        return f"reports/{self.id}"

    @property
    def period(self) -> Period:
        """The period covered."""
        return Period(self.start_date, self.end_date, self.period_label)

    @property
    def state(self) -> str:
        """What clients see: the stored outcome once there is one, else the operation's state."""
        if self.status is not ReportStatus.PENDING:
            return self.status.value
        # The operation is written with the report: none means it was deleted or purged unfinished.
        return self.operation_state or "UNKNOWN"

    @property
    def file_name(self) -> str:
        """Download file name, e.g. ``digest_2026-11-24.csv``."""
        span = self.start_date.isoformat()
        if self.end_date != self.start_date:
            span += f"_{self.end_date.isoformat()}"
        return f"{self.type.value}_{span}.{self.format.value}"

    def complete(self, now: dt.datetime, size_bytes: int, row_count: int) -> None:
        """Records that the file was stored.

        Args:
            now: Current time.
            size_bytes: File size.
            row_count: Data rows.

        Raises:
            FailedPrecondition: If it was already completed (a file is stored once).
        """
        if self.status is ReportStatus.SUCCEEDED:
            raise FailedPrecondition(f"{self.name} was already generated", reason="REPORT_DONE")
        self.status = ReportStatus.SUCCEEDED
        self.complete_time = now
        self.size_bytes = size_bytes
        self.row_count = row_count
        self.error = None

    def fail(self, now: dt.datetime, message: str) -> None:
        """Records that generation failed (no file).

        Args:
            now: Current time.
            message: Why.
        """
        if self.status is ReportStatus.SUCCEEDED:
            return
        self.status = ReportStatus.FAILED
        self.complete_time = now
        self.error = message[:2000]

    def check_downloadable(self) -> None:
        """Refuses a download before the file exists.

        Raises:
            FailedPrecondition: Saying what state the report is in and what to do.
        """
        if self.status is ReportStatus.SUCCEEDED:
            return
        operation = f"operations/reports.{self.operation_id}"
        if self.status is ReportStatus.FAILED or self.state in ("CANCELLED", "FAILED", "UNKNOWN"):
            raise FailedPrecondition(
                f"{self.name} has no file: its generation ended {self.state}"
                f" ({self.error or 'see ' + operation}); request a new report",
                reason="REPORT_FAILED",
                metadata={"operation": operation},
            )
        raise FailedPrecondition(
            f"{self.name} is {self.state}; wait for {operation} to finish, then download",
            reason="REPORT_NOT_READY",
            metadata={"operation": operation},
        )


@dataclasses.dataclass(frozen=True)
class ReportFile:
    """A stored report file.

    Attributes:
        report_id: The report.
        content: File bytes.
        content_type: HTTP content type.
        file_name: Suggested download name.
        sha256: Hex digest of the content.
    """

    report_id: uuid.UUID
    content: bytes
    content_type: str
    file_name: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class Table:
    """The data of a report: column names and rows (values are str, int, float or None).

    Attributes:
        columns: Column names, in order.
        rows: One dict per row, keyed by column.
        totals: Sums over the rows (JSON only), when meaningful.
    """

    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]]
    totals: Mapping[str, Any] | None = None


DATASET_COLUMNS = (
    "day",
    "dataset_id",
    "dataset",
    "imports_completed",
    "imports_failed",
    "rows_total",
    "rows_accepted",
    "rows_rejected",
)
"""Columns of a ``dataset_daily`` report."""

ENDPOINT_COLUMNS = (
    "day",
    "endpoint_id",
    "endpoint",
    "deliveries_succeeded",
    "deliveries_failed",
    "deliveries_dead",
    "latency_p50_ms",
    "latency_p95_ms",
)
"""Columns of an ``endpoint_daily`` report."""

DIGEST_COLUMNS = (
    "day",
    "imports_completed",
    "imports_failed",
    "rows_accepted",
    "rows_rejected",
    "deliveries_succeeded",
    "deliveries_failed",
    "deliveries_dead",
    "latency_p50_ms",
    "latency_p95_ms",
)
"""Columns of a ``digest`` report."""

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    # Names come from users: a cell starting with "=" would run as a formula in a spreadsheet.
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    return "" if value is None else value


def render(report: Report, table: Table, generated_time: dt.datetime) -> bytes:
    """Renders the file of ``report``.

    Args:
        report: The report (type, period, format).
        table: Its data.
        generated_time: When it was built.

    Returns:
        UTF-8 CSV (header + rows) or JSON (``{"report", "type", "period", "generated_time",
        "columns", "rows", "totals"}``).
    """
    if report.format is ReportFormat.CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow([_csv_cell(row.get(column)) for column in table.columns])
        return buffer.getvalue().encode()
    document = {
        "report": report.name,
        "type": report.type.value,
        "tenant": report.tenant,
        "period": report.period.to_dict(),
        "generated_time": generated_time.isoformat(),
        "columns": list(table.columns),
        "rows": [dict(row) for row in table.rows],
        "totals": dict(table.totals) if table.totals is not None else None,
    }
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def sum_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[str, int]:
    """Sums integer columns over ``rows``.

    Args:
        rows: Table rows.
        columns: Columns to sum.

    Returns:
        Column -> total.
    """
    return {column: sum(int(row.get(column) or 0) for row in rows) for column in columns}
