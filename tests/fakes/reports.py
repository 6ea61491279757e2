"""In-memory fake of the reports unit of work and repositories (see ``tests/fakes/operations.py``
for the transaction semantics).

Faked: reports and their files, applied-event ids, the dataset-day projection. Not faked
(``NotImplementedError``): the endpoint-day and digest projections and latency compaction,
whose p50/p95 percentiles are set-based SQL proven by ``tests/service/test_reports_service.py``.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from domains.operations.model import Operation
from domains.reports.events import DatasetDelta, EndpointDelta
from domains.reports.model import Report, ReportFile
from domains.reports.repository import FILTER_COLUMNS, ProjectionRepository, ReportRepository
from domains.reports.unit_of_work import ReportsUoW
from domains.shared.errors import InvalidArgument
from domains.shared.events import IntegrationEvent
from domains.shared.query import COMPARE, Condition, Keyset
from tests.fakes.operations import FakeDatabase, FakeUnitOfWork, _copy, sql_only

TABLES: dict[str, Any] = {
    "reports": {},
    "report_files": {},
    "applied_events": {},
    "dataset_daily": {},
}
"""The reports tables of a :class:`FakeDatabase`."""

_PG_TEST = "tests/service/test_reports_service.py"
_SUMMED = ("imports_completed", "imports_failed", "rows_total", "rows_accepted", "rows_rejected")


def reports_database() -> FakeDatabase:
    """Returns an empty fake reports schema."""
    return FakeDatabase(TABLES)


class FakeReportRepository:
    """Reports and their files in memory."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._reports: dict[uuid.UUID, Report] = state["reports"]
        self._files: dict[uuid.UUID, ReportFile] = state["report_files"]
        self._operations: dict[uuid.UUID, Operation] = state["operations"]

    def _with_state(self, report: Report) -> Report:
        # The SQL repository joins the operation's state in; so does the fake.
        op = self._operations.get(report.operation_id)
        return dataclasses.replace(
            _copy(report), operation_state=str(op.state) if op is not None else None
        )

    async def add(self, report: Report) -> None:
        """Inserts ``report``."""
        self._reports[report.id] = _copy(report)

    async def get(
        self, report_id: uuid.UUID, *, tenant: str | None = None, for_update: bool = False
    ) -> Report | None:
        """Loads a report with its operation's state."""
        report = self._reports.get(report_id)
        if report is None or (tenant is not None and report.tenant != tenant):
            return None
        return self._with_state(report)

    async def save(self, report: Report) -> None:
        """Writes back ``report``."""
        if report.id in self._reports:
            self._reports[report.id] = dataclasses.replace(_copy(report), operation_state=None)

    async def list(
        self,
        tenant: str,
        conditions: Sequence[Condition],
        *,
        after: Keyset | None,
        limit: int,
    ) -> builtins.list[Report]:
        """Lists a tenant's reports in ``(create_time, id)`` order."""
        for cond in conditions:
            if cond.field not in FILTER_COLUMNS:
                raise InvalidArgument(
                    f"filter: field {cond.field!r} is not filterable", reason="INVALID_FILTER"
                )
        found = sorted(
            (
                r
                for r in self._reports.values()
                if r.tenant == tenant
                and (after is None or (r.create_time, r.id) > after)
                and all(
                    COMPARE[c.op](getattr(r, FILTER_COLUMNS[c.field]), c.value) for c in conditions
                )
            ),
            key=lambda r: (r.create_time, r.id),
        )
        return [self._with_state(r) for r in found[:limit]]

    async def add_file(self, file: ReportFile, now: dt.datetime) -> None:
        """Stores ``file`` (once per report: a second one is a primary key violation)."""
        if file.report_id in self._files:
            raise AssertionError(f"report {file.report_id} already has a file")
        self._files[file.report_id] = _copy(file)

    async def get_file(self, report_id: uuid.UUID, file_name: str = "") -> ReportFile | None:
        """Loads a report's file."""
        file = self._files.get(report_id)
        return dataclasses.replace(file, file_name=file_name) if file is not None else None


class FakeProjectionRepository:
    """Applied-event ids and the dataset-day projection in memory."""

    def __init__(self, state: dict[str, Any]) -> None:
        """Binds the repository to a transaction's working copy.

        Args:
            state: The unit of work's copy of the tables.
        """
        self._applied: dict[uuid.UUID, dict[str, Any]] = state["applied_events"]
        self._datasets: dict[tuple[str, str, dt.date], dict[str, Any]] = state["dataset_daily"]

    async def mark_applied(self, event: IntegrationEvent, outcome: str, now: dt.datetime) -> bool:
        """Records that ``event`` is applied; ``False`` for a duplicate."""
        if event.id in self._applied:
            return False
        self._applied[event.id] = {
            "type": event.type[:200],
            "tenant": event.tenant,
            "outcome": outcome,
            "event_time": event.time,
            "applied_time": now,
        }
        return True

    async def add_dataset(self, delta: DatasetDelta, now: dt.datetime) -> None:
        """Adds an import event to its tenant/dataset/day row."""
        key = (delta.tenant, delta.dataset_id, delta.day)
        row = self._datasets.setdefault(
            key, {"day": delta.day, "dataset_id": delta.dataset_id, **dict.fromkeys(_SUMMED, 0)}
        )
        row["dataset"] = delta.dataset
        for name in _SUMMED:
            row[name] += getattr(delta, name)
        row["update_time"] = now

    async def add_endpoint(self, delta: EndpointDelta, now: dt.datetime) -> None:
        """Not faked (latency samples feed SQL percentiles)."""
        raise sql_only("projections.add_endpoint", _PG_TEST)

    async def dataset_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """A tenant's dataset-day rows in ``[start, end]``, by day then dataset."""
        rows = [
            {k: v for k, v in row.items() if k != "update_time"}
            for (row_tenant, _, day), row in self._datasets.items()
            if row_tenant == tenant and start <= day <= end
        ]
        rows.sort(key=lambda r: (r["day"], r["dataset"], r["dataset_id"]))
        return [{**row, "day": row["day"].isoformat()} for row in rows]

    async def endpoint_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Not faked (p50/p95 in SQL)."""
        raise sql_only("projections.endpoint_days", _PG_TEST)

    async def digest_days(
        self, tenant: str, start: dt.date, end: dt.date
    ) -> builtins.list[dict[str, Any]]:
        """Not faked (a generated day series with SQL percentiles)."""
        raise sql_only("projections.digest_days", _PG_TEST)

    async def purge_applied(self, applied_before: dt.datetime, limit: int) -> int:
        """Deletes applied-event ids recorded before ``applied_before``."""
        gone = [k for k, r in self._applied.items() if r["applied_time"] < applied_before][:limit]
        for key in gone:
            del self._applied[key]
        return len(gone)

    async def compact_latencies(self, before: dt.date) -> int:
        """Not faked (SQL percentiles)."""
        raise sql_only("projections.compact_latencies", _PG_TEST)


class FakeReportsUnitOfWork(FakeUnitOfWork):
    """A fake transaction on the reports schema (a consumer: it has an inbox)."""

    reports: FakeReportRepository
    projections: FakeProjectionRepository

    def __init__(self, db: FakeDatabase, *, max_attempts: int | None = None) -> None:
        """Creates the unit of work.

        Args:
            db: A database from :func:`reports_database`.
            max_attempts: Attempt cap of generate operations.
        """
        super().__init__(db, domain="reports", max_attempts=max_attempts, consumer=True)

    def _bind(self, state: dict[str, Any]) -> None:
        super()._bind(state)
        self.reports = FakeReportRepository(state)
        self.projections = FakeProjectionRepository(state)


_reports: type[ReportRepository] = FakeReportRepository
_projections: type[ProjectionRepository] = FakeProjectionRepository
_uow: type[ReportsUoW] = FakeReportsUnitOfWork
